//! JSON reporter: one object per report, on one line. The field names are a contract other
//! tools parse: extend, never rename (README documents them).
use std::io::Write;

use super::Report;

pub fn write(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{sample_report as sample, ReportKind};

    #[test]
    fn one_line_with_the_contract_fields() {
        let mut buf = Vec::new();
        write(&sample(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "interval");
        assert_eq!(v["elapsed_s"], 4.0);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["lost"]["ring_full_allocs"], 3);
        for k in ["live_objects", "live_bytes", "delta_objects", "delta_bytes"] {
            assert!(v["totals"][k].is_number(), "totals.{k}");
            assert!(v["sites"][0][k].is_number(), "sites[0].{k}");
        }
        let f = &v["sites"][0]["frames"][0];
        assert_eq!(f["function"], "leak_fixed");
        assert_eq!(f["file"], "/src/leaky.c");
        assert_eq!(f["line"], 42);
        assert_eq!(f["module"], "/bin/leaky");
        assert_eq!(f["addr"], "0x401136");
        assert!(v.get("exit_code").is_none());
    }

    #[test]
    fn final_reports_say_final() {
        let mut r = sample();
        r.kind = ReportKind::Final;
        r.exit_code = Some(0);
        let mut buf = Vec::new();
        write(&r, &mut buf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["kind"], "final");
        assert_eq!(v["exit_code"], 0);
    }
}
