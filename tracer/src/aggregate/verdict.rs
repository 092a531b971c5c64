//! Verdicts: what a call site's history of intervals says about it.
//!
//! A site's live bytes are sampled at every interval report. Over the last `window` intervals
//! (after warm-up) the samples decide:
//!
//! - `leak`: live bytes grew over the window and are still growing in its second half, and the
//!   growth is either steady (in at least `leak_fraction` of the intervals) or a clear trend (the
//!   least-squares slope is at least [`TREND_T`] standard errors above zero: a slow leak under
//!   noise);
//! - `freed`: live bytes went back down by more than the tolerance;
//! - `plateau`: grew, then flat (a bounded cache), or holds more than one interval's worth of
//!   its allocations without growing;
//! - `churn`: allocates and frees with no net growth, holding less than an interval's worth;
//! - `new`: fewer than `min_intervals` intervals of history yet;
//! - `uncertain`: events were lost while the window was recorded, so the numbers may be wrong:
//!   never called a leak.
//!
//! Growth counts when it is above [`FLAT_FRACTION`] of the site's peak in the window; a fall
//! (or a rise, for "grew, then flat") counts when it is above the larger of that and two average
//! blocks of the site, so that sampling a cache mid-replacement is not a change. Pure functions,
//! unit-tested on synthetic histories.
use serde::Serialize;

/// How much of the start verdicts ignore (--warmup): seconds, or intervals.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Warmup {
    Secs(f64),
    Intervals(u32),
}

/// How many standard errors above zero a slope must be to count as a trend.
pub const TREND_T: f64 = 3.0;
/// Changes within this fraction of a site's peak live bytes count as flat.
pub const FLAT_FRACTION: f64 = 0.02;
/// Share of the intervals that must grow for a leak while the number of live blocks holds,
/// and how many intervals that takes at least (three of three rise by chance one time in six).
pub const OBJECTS_FLAT_GROWN: f64 = 0.9;
pub const OBJECTS_FLAT_MIN_SPAN: usize = 5;
/// Below this many intervals, the growth must also be this share of the site's peak bytes.
pub const OBJECTS_FLAT_LONG_SPAN: usize = 9;
pub const OBJECTS_FLAT_SHORT_GROWTH: f64 = 0.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    New,
    Leak,
    Plateau,
    Churn,
    Freed,
    Uncertain,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::New => "new",
            Verdict::Leak => "leak",
            Verdict::Plateau => "plateau",
            Verdict::Churn => "churn",
            Verdict::Freed => "freed",
            Verdict::Uncertain => "uncertain",
        }
    }
}

/// What a verdict was judged on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictScope {
    /// The site's own history.
    #[default]
    Stack,
    /// All stacks through the site's allocation call together: they grow and shrink as one
    /// (e.g. a cache filled from one caller and refilled from another).
    AllocationPoint,
}

/// Thresholds (command-line options; defaults documented in the README).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerdictParams {
    /// Intervals of history a verdict looks at.
    pub window: usize,
    /// Intervals needed before anything but `new` is said.
    pub min_intervals: usize,
    /// Share of the window's intervals that must grow for a steady leak.
    pub leak_fraction: f64,
    /// Sampled mode: a site's growth is an estimate from this many sampled blocks at least
    /// (live at the end, and more than at the window's start) before it is called a leak;
    /// fewer make it `uncertain`. 0 in a full trace.
    pub min_sampled_blocks: u64,
}

impl Default for VerdictParams {
    fn default() -> Self {
        VerdictParams {
            window: 10,
            min_intervals: 3,
            leak_fraction: 0.6,
            min_sampled_blocks: 0,
        }
    }
}

/// One site's cumulative numbers at one interval report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since tracing began.
    pub t: f64,
    pub live_bytes: u64,
    pub live_objects: u64,
    /// Live blocks recorded, and blocks recorded in all (the samples behind the estimates,
    /// in sampled mode).
    pub live_blocks: u64,
    pub blocks: u64,
    pub alloc_bytes: u64,
    pub allocs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Least-squares growth of live bytes and objects over the window, per second.
    pub rate_bytes_per_s: f64,
    pub rate_objects_per_s: f64,
    /// Intervals in the window whose live bytes grew, and how many the window holds.
    pub grown_intervals: usize,
    pub verdict_intervals: usize,
    /// The latest intervals that grew in a row.
    pub growth_streak: usize,
    pub verdict_scope: VerdictScope,
    /// Sampled mode: the rate's error bound (two standard deviations of the estimate, from
    /// the number of sampled blocks its growth rests on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_error_bytes_per_s: Option<f64>,
}

/// Sampled mode: whether the sampled blocks grew by more than chance. A site whose live
/// blocks turn over (a cache) gains and loses sampled blocks at random: over the window the
/// net gain has a standard deviation of about the square root of the sampled blocks that came
/// and went. Growth must be three of those; a leak, whose blocks stay, gets there with nine.
fn sampled_growth(first: Sample, last: Sample) -> bool {
    let (grew, churned) = sampled_turnover(first, last);
    grew > 0 && grew as f64 >= 3.0 * (churned as f64).sqrt() * uncertainty(first, last)
}

/// How uncertain one sampled block is, from 0 (blocks so large that every one is sampled:
/// each stands for itself) to 1 (small blocks, each standing for many). A block standing for
/// w calls adds w (w - 1) to the estimate's variance: sqrt(1 - 1 / w) of the w^2 taken above.
fn uncertainty(first: Sample, last: Sample) -> f64 {
    let s = if last.live_blocks > 0 { last } else { first };
    if s.live_blocks == 0 {
        return 1.0;
    }
    let w = s.live_objects as f64 / s.live_blocks as f64;
    (1.0 - 1.0 / w.max(1.0)).sqrt()
}

/// Three standard deviations, in bytes, of the change of a sampled site's estimate over the
/// window: its sampled blocks' bytes each, times the square root of those that came and went.
fn sampled_noise_bytes(first: Sample, last: Sample) -> f64 {
    let (_, churned) = sampled_turnover(first, last);
    let per_block = if last.live_blocks > 0 {
        last.live_bytes as f64 / last.live_blocks as f64
    } else if first.live_blocks > 0 {
        first.live_bytes as f64 / first.live_blocks as f64
    } else {
        0.0
    };
    3.0 * per_block * (churned as f64).sqrt() * uncertainty(first, last)
}

/// The net gain of sampled blocks over the window, and how many came and went in all.
fn sampled_turnover(first: Sample, last: Sample) -> (i64, u64) {
    let came = last.blocks.saturating_sub(first.blocks);
    let grew = last.live_blocks as i64 - first.live_blocks as i64;
    let went = (came as i64 - grew).max(0) as u64;
    (grew, came + went)
}

/// Judges one site from its samples, oldest first (the window's start and each interval's
/// end). `lost` says events were lost while these samples were taken.
pub fn assess(samples: &[Sample], p: &VerdictParams, lost: bool) -> Assessment {
    let k = samples.len().saturating_sub(1);
    let live = |i: usize| samples[i].live_bytes as f64;
    let (rate_b, t_b) = slope(samples, |s| s.live_bytes as f64);
    let (rate_o, _) = slope(samples, |s| s.live_objects as f64);
    let grown = (1..=k).filter(|&i| live(i) > live(i - 1)).count();
    let streak = (1..=k).rev().take_while(|&i| live(i) > live(i - 1)).count();
    let mut a = Assessment {
        verdict: Verdict::New,
        rate_bytes_per_s: round3(rate_b),
        rate_objects_per_s: round3(rate_o),
        grown_intervals: grown,
        verdict_intervals: k,
        growth_streak: streak,
        verdict_scope: VerdictScope::Stack,
        rate_error_bytes_per_s: None,
    };
    if p.min_sampled_blocks > 0 && k > 0 {
        // Sampled blocks arrive as a Poisson count n, each standing for the same share of
        // bytes: the estimate's relative standard deviation is 1 / sqrt(n).
        let (first, last) = (samples[0], samples[k]);
        let grew = last.live_blocks.saturating_sub(first.live_blocks).max(1) as f64;
        a.rate_error_bytes_per_s = Some(round3(2.0 * rate_b.abs() / grew.sqrt()));
    }
    if k < p.min_intervals.max(1) {
        return a;
    }
    let (first, last) = (samples[0], samples[k]);
    let peak = (0..=k).map(live).fold(0.0, f64::max);
    let avg_block = if last.live_objects > 0 {
        last.live_bytes as f64 / last.live_objects as f64
    } else if last.allocs > first.allocs {
        (last.alloc_bytes - first.alloc_bytes) as f64 / (last.allocs - first.allocs) as f64
    } else {
        0.0
    };
    // Sampled: a change of the estimate within three standard deviations of the sampling
    // noise is not told from none (a cache's estimate drifts either way).
    let noise = if p.min_sampled_blocks > 0 {
        sampled_noise_bytes(first, last)
    } else {
        0.0
    };
    let tol = (2.0 * avg_block).max(FLAT_FRACTION * peak).max(noise);
    let net = live(k) - live(0);
    let recent = live(k) - live(k / 2);
    let steady = grown as f64 >= p.leak_fraction * k as f64;
    let trend = rate_b > 0.0 && t_b >= TREND_T;
    // Bytes that swing while the number of blocks holds still are blocks of varied sizes being
    // replaced (a pool, a ring of buffers): their samples go up about half the time by chance
    // alone. Without more blocks, growth must be there in nearly every interval and a clear
    // trend (one block grown by realloc, buffers replaced by bigger ones).
    let objects = |i: usize| samples[i].live_objects as f64;
    let peak_objects = (0..=k).map(objects).fold(0.0, f64::max);
    // Over the window's second half: a ring filled at the start and steady since is flat.
    let objects_flat =
        (objects(k) - objects(k / 2)).abs() <= (2.0f64).max(FLAT_FRACTION * peak_objects);
    // Counted from the interval the site's first bytes appear in (a site born mid-window).
    let first_live = (0..=k).find(|&i| live(i) > 0.0).unwrap_or(0);
    let span = (first_live.max(1)..=k).count();
    // A short window can rise every time by chance (five of five: one in 120): there the
    // growth must also be large against what the site holds (a buffer grown from little).
    let evidence = if objects_flat {
        trend
            && span >= OBJECTS_FLAT_MIN_SPAN
            && grown as f64 >= OBJECTS_FLAT_GROWN * span as f64
            && (span >= OBJECTS_FLAT_LONG_SPAN || net > OBJECTS_FLAT_SHORT_GROWTH * peak)
    } else {
        steady || trend
    };
    // Sampled: the growth must beat the sampling noise, unless the blocks are so large that
    // each stands for itself (one block grown by realloc).
    let evidence = evidence
        && (p.min_sampled_blocks == 0
            || uncertainty(first, last) < 0.5
            || sampled_growth(first, last));
    // Growth is measured against the peak only: one block grown by realloc is one big block.
    let small = FLAT_FRACTION * peak;
    a.verdict = if net > small && recent > small / 2.0 && evidence {
        Verdict::Leak
    } else if net < -tol {
        Verdict::Freed
    } else {
        let mean = (0..=k).map(live).sum::<f64>() / (k + 1) as f64;
        let per_interval = (last.alloc_bytes - first.alloc_bytes) as f64 / k as f64;
        if (net > tol && recent <= tol / 2.0) || (mean > 0.0 && mean >= per_interval) {
            Verdict::Plateau
        } else {
            Verdict::Churn
        }
    };
    // Sampled: a site whose sampled blocks only came over the window, none went, grew; too
    // few of them to tell a leak from chance is not evidence of churn or a plateau either
    // (a 64-byte leak sampled at 64K gets a sample every ten seconds).
    if matches!(a.verdict, Verdict::Plateau | Verdict::Churn)
        && p.min_sampled_blocks > 0
        && uncertainty(first, last) >= 0.5
        && matches!(sampled_turnover(first, last), (grew, churned) if grew > 0 && churned == grew as u64)
    {
        a.verdict = Verdict::Uncertain;
    }
    // Sampled: a leak on one or two samples is chance as much as growth.
    let few = |n: u64| n < p.min_sampled_blocks;
    if a.verdict == Verdict::Leak
        && p.min_sampled_blocks > 0
        && uncertainty(first, last) >= 0.5
        && (few(last.live_blocks) || few(last.live_blocks.saturating_sub(first.live_blocks) + 1))
    {
        a.verdict = Verdict::Uncertain;
    }
    if lost {
        a.verdict = Verdict::Uncertain;
    }
    a
}

/// Least-squares slope of `y` over the samples' times, and its t statistic (slope over its
/// standard error; infinite for a perfect non-flat line).
fn slope(samples: &[Sample], y: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return (0.0, 0.0);
    }
    let mt = samples.iter().map(|s| s.t).sum::<f64>() / n;
    let my = samples.iter().map(&y).sum::<f64>() / n;
    let sxx: f64 = samples.iter().map(|s| (s.t - mt).powi(2)).sum();
    if sxx <= 0.0 {
        return (0.0, 0.0);
    }
    let sxy: f64 = samples.iter().map(|s| (s.t - mt) * (y(s) - my)).sum();
    let b = sxy / sxx;
    if samples.len() < 3 {
        return (b, 0.0);
    }
    let sse: f64 = samples
        .iter()
        .map(|s| (y(s) - my - b * (s.t - mt)).powi(2))
        .sum();
    let se = (sse / (n - 2.0) / sxx).sqrt();
    let t = if se > 0.0 {
        b / se
    } else if b != 0.0 {
        f64::INFINITY.copysign(b)
    } else {
        0.0
    };
    (b, t)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sampled site at 1 s intervals: (sampled blocks live, sampled blocks in all), each
    /// standing for `weight` blocks of `block` bytes.
    fn sampled(points: &[(u64, u64)], block: u64, weight: u64) -> Vec<Sample> {
        points
            .iter()
            .enumerate()
            .map(|(i, &(live, all))| Sample {
                t: i as f64,
                live_bytes: live * weight * block,
                live_objects: live * weight,
                live_blocks: live,
                blocks: all,
                alloc_bytes: all * weight * block,
                allocs: all * weight,
            })
            .collect()
    }

    #[test]
    fn sampled_growth_must_beat_the_sampling_noise() {
        let p = VerdictParams {
            min_sampled_blocks: 3,
            ..VerdictParams::default()
        };
        // A leak: three sampled blocks a second, none freed.
        let leak: Vec<(u64, u64)> = (0..11).map(|i| (3 * i, 3 * i)).collect();
        let a = assess(&sampled(&leak, 64, 20), &p, false);
        assert_eq!(a.verdict, Verdict::Leak, "{a:?}");
        // Two standard deviations of the estimate: 2 * rate / sqrt(30 sampled blocks).
        let err = a.rate_error_bytes_per_s.unwrap();
        assert!((err / (2.0 * a.rate_bytes_per_s / 30f64.sqrt()) - 1.0).abs() < 0.01);
        // A cache that keeps ~200 sampled blocks and replaces 20 a second: the same net gain of
        // 30 over the window is chance (20 * 10 came, 170 went).
        let cache: Vec<(u64, u64)> = (0..11).map(|i| (200 + 3 * i, 200 + 20 * i)).collect();
        let a = assess(&sampled(&cache, 64, 20), &p, false);
        assert_ne!(a.verdict, Verdict::Leak, "{a:?}");
        // Nor freed when its estimate drifts down by chance: 200 sampled blocks, 20 a second
        // replaced, 30 fewer at the end.
        let down: Vec<(u64, u64)> = (0..11).map(|i| (230 - 3 * i, 230 + 20 * i)).collect();
        let a = assess(&sampled(&down, 64, 20), &p, false);
        assert!(
            matches!(a.verdict, Verdict::Plateau | Verdict::Churn),
            "{a:?}"
        );
        // A block sampled every time (1 MiB at 4K) stands for itself: one is enough.
        let big: Vec<(u64, u64)> = (0..11).map(|i| (1, 1 + i)).collect();
        let mut h = sampled(&big, 1 << 20, 1);
        for (i, s) in h.iter_mut().enumerate() {
            s.live_bytes = (1 + i as u64) << 20;
        }
        let a = assess(&h, &p, false);
        assert_eq!(a.verdict, Verdict::Leak, "{a:?}");
        // Two samples are no leak either, however they grew.
        let two: Vec<(u64, u64)> = (0..11).map(|i| (u64::from(i >= 5) * 2, 2)).collect();
        let a = assess(&sampled(&two, 64, 1000), &p, false);
        assert_ne!(a.verdict, Verdict::Leak, "{a:?}");
        // A slow leak's few samples (one every other second, none freed): too few for a leak,
        // and no sign of churn or a plateau either.
        let slow: Vec<(u64, u64)> = (0..11).map(|i| (i / 2, i / 2)).collect();
        let a = assess(&sampled(&slow, 64, 1000), &p, false);
        assert_eq!(a.verdict, Verdict::Uncertain, "{a:?}");
        // Temporaries sampled now and then, each freed: churn, as in a full trace.
        let temps: Vec<(u64, u64)> = (0..11).map(|i| (i % 2, i)).collect();
        let a = assess(&sampled(&temps, 64, 1000), &p, false);
        assert_eq!(a.verdict, Verdict::Churn, "{a:?}");
        // A full trace judges the same numbers on the bytes alone.
        let a = assess(&sampled(&cache, 64, 20), &VerdictParams::default(), false);
        assert_eq!(a.rate_error_bytes_per_s, None);
    }

    /// A history from live-bytes values at 1 s intervals, blocks of `block` bytes, with
    /// `alloc_per_s` bytes allocated each second.
    fn history(live: &[i64], block: u64, alloc_per_s: u64) -> Vec<Sample> {
        live.iter()
            .enumerate()
            .map(|(i, &l)| Sample {
                t: i as f64,
                live_bytes: l.max(0) as u64,
                live_objects: l.max(0) as u64 / block,
                live_blocks: 0,
                blocks: 0,
                alloc_bytes: alloc_per_s * i as u64,
                allocs: alloc_per_s * i as u64 / block,
            })
            .collect()
    }

    fn verdict(live: &[i64], block: u64, alloc_per_s: u64) -> Verdict {
        assess(
            &history(live, block, alloc_per_s),
            &VerdictParams::default(),
            false,
        )
        .verdict
    }

    /// A deterministic pseudo-random sequence in [-1, 1].
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f64 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn steady_leak_is_a_leak_with_its_rate() {
        let live: Vec<i64> = (0..11).map(|i| 6400 * i).collect();
        let a = assess(&history(&live, 64, 6400), &VerdictParams::default(), false);
        assert_eq!(a.verdict, Verdict::Leak);
        assert_eq!(a.rate_bytes_per_s, 6400.0);
        assert_eq!(a.rate_objects_per_s, 100.0);
        assert_eq!(
            (a.grown_intervals, a.verdict_intervals, a.growth_streak),
            (10, 10, 10)
        );
    }

    #[test]
    fn one_block_growing_by_realloc_is_a_leak() {
        // live objects stay at one, bytes grow
        let s: Vec<Sample> = (0..11)
            .map(|i| Sample {
                t: i as f64,
                live_bytes: 3200 * (i + 1),
                live_objects: 1,
                live_blocks: 0,
                blocks: 0,
                alloc_bytes: 3200 * (i + 1),
                allocs: 100 * (i + 1),
            })
            .collect();
        let a = assess(&s, &VerdictParams::default(), false);
        assert_eq!(a.verdict, Verdict::Leak);
        assert_eq!(a.rate_bytes_per_s, 3200.0);
        assert_eq!(a.rate_objects_per_s, 0.0);
    }

    /// Two threads each keep a ring of 64 blocks of random sizes (16..4096 B) and replace one
    /// at a time (the `churn` workload): 126 to 128 blocks live, bytes swinging by chance.
    /// Over thousands of windows, never a leak; nor when each new site's window starts from
    /// nothing (the ring filled in its first interval, as when churn starts under tracer).
    #[test]
    fn a_bounded_ring_of_varied_blocks_is_never_a_leak() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut ring: Vec<u64> = (0..128).map(|_| 16 + rnd() % 4081).collect();
        let mut allocated = 0u64;
        let mut samples: Vec<Sample> = Vec::new();
        let mut leaks = 0;
        for t in 0..5000 {
            // Thousands of replacements between two samples: each sample a fresh draw.
            for _ in 0..3000 {
                let i = (rnd() % 128) as usize;
                ring[i] = 16 + rnd() % 4081;
                allocated += ring[i];
            }
            let in_flight = (rnd() % 3) as usize; // blocks freed, their replacement not yet back
            let live: u64 = ring[in_flight..].iter().sum();
            samples.push(Sample {
                t: t as f64,
                live_bytes: live,
                live_objects: (128 - in_flight) as u64,
                live_blocks: 0,
                blocks: 0,
                alloc_bytes: allocated,
                allocs: 3000 * t as u64,
            });
            if samples.len() > 11 {
                samples.remove(0);
            }
            // Judged from its fourth sample on (`--min-intervals` 3), as a new site is.
            if samples.len() >= 4 {
                let a = assess(&samples, &VerdictParams::default(), false);
                leaks += (a.verdict == Verdict::Leak) as u32;
            }
            // A new site every 25 samples: its short first windows are judged too, from an
            // empty first sample (its ring filled within the first interval).
            if t % 25 == 24 {
                samples.clear();
                samples.push(Sample {
                    t: t as f64 + 0.5,
                    ..Sample::default()
                });
            }
        }
        assert_eq!(leaks, 0);
    }

    #[test]
    fn one_block_growing_by_realloc_from_mid_window_is_a_leak() {
        // a process started four intervals into the window: its block grows from then on
        let s: Vec<Sample> = (0..11u64)
            .map(|i| {
                let grown = i.saturating_sub(4);
                Sample {
                    t: i as f64,
                    live_bytes: 3200 * grown,
                    live_objects: (grown > 0) as u64,
                    live_blocks: 0,
                    blocks: 0,
                    alloc_bytes: 3200 * grown,
                    allocs: 100 * grown,
                }
            })
            .collect();
        assert_eq!(
            assess(&s, &VerdictParams::default(), false).verdict,
            Verdict::Leak
        );
    }

    #[test]
    fn a_filled_cache_is_a_plateau() {
        // flat at 1 MB with one 512 B entry replaced per tick; samples jitter by one entry
        let live: Vec<i64> = (0..11)
            .map(|i| 1_024_000 + if i % 3 == 0 { 512 } else { 0 })
            .collect();
        assert_eq!(verdict(&live, 512, 51_200), Verdict::Plateau);
    }

    #[test]
    fn growth_then_flat_is_a_plateau() {
        let live = [
            0, 256_000, 512_000, 768_000, 1_024_000, 1_024_000, 1_024_000, 1_024_000, 1_024_000,
            1_024_000, 1_024_000,
        ];
        assert_eq!(verdict(&live, 512, 51_200), Verdict::Plateau);
    }

    #[test]
    fn temporaries_are_churn() {
        // ~100 KB/s allocated, at most a block or two live at a sample
        let live = [0, 512, 0, 0, 1024, 0, 700, 0, 0, 0, 32];
        assert_eq!(verdict(&live, 528, 105_600), Verdict::Churn);
    }

    #[test]
    fn sawtooth_is_not_a_leak() {
        // a buffer that fills for four intervals and is flushed
        let live: Vec<i64> = (0..11).map(|i| 4096 * (i % 5)).collect();
        let v = verdict(&live, 64, 4096);
        assert!(matches!(v, Verdict::Plateau | Verdict::Churn), "{v:?}");
        // and over a longer window too
        let p = VerdictParams {
            window: 30,
            ..VerdictParams::default()
        };
        let live: Vec<i64> = (0..31).map(|i| 4096 * (i % 5)).collect();
        let v = assess(&history(&live, 64, 4096), &p, false).verdict;
        assert_ne!(v, Verdict::Leak);
    }

    #[test]
    fn slow_leak_under_noise_is_found_by_its_trend() {
        // +100 B/s under ±500 B of noise: grows in only about half the intervals
        let p = VerdictParams {
            window: 20,
            ..VerdictParams::default()
        };
        let n = noise(21, 7);
        let live: Vec<i64> = (0..21)
            .map(|i| 50_000 + 100 * i as i64 + (500.0 * n[i]) as i64)
            .collect();
        let a = assess(&history(&live, 16, 2000), &p, false);
        assert!(a.grown_intervals < 15, "{a:?}");
        assert_eq!(a.verdict, Verdict::Leak, "{a:?}");
        assert!((a.rate_bytes_per_s - 100.0).abs() < 40.0, "{a:?}");
    }

    #[test]
    fn noise_without_a_trend_is_not_a_leak() {
        for seed in 1..50 {
            let n = noise(11, seed);
            let live: Vec<i64> = (0..11).map(|i| 50_000 + (500.0 * n[i]) as i64).collect();
            let v = verdict(&live, 16, 2000);
            assert_ne!(v, Verdict::Leak, "seed {seed}: {live:?}");
        }
    }

    #[test]
    fn going_back_down_is_freed() {
        let live = [
            100_000, 100_000, 90_000, 80_000, 50_000, 20_000, 0, 0, 0, 0, 0,
        ];
        assert_eq!(verdict(&live, 100, 0), Verdict::Freed);
    }

    #[test]
    fn short_histories_are_new() {
        assert_eq!(verdict(&[0, 6400, 12800], 64, 6400), Verdict::New);
        assert_eq!(verdict(&[0], 64, 6400), Verdict::New);
        assert_eq!(verdict(&[], 64, 6400), Verdict::New);
        assert_eq!(verdict(&[0, 6400, 12800, 19200], 64, 6400), Verdict::Leak);
    }

    #[test]
    fn losses_make_a_leak_uncertain() {
        let live: Vec<i64> = (0..11).map(|i| 6400 * i).collect();
        let a = assess(&history(&live, 64, 6400), &VerdictParams::default(), true);
        assert_eq!(a.verdict, Verdict::Uncertain);
        // the rate is still shown
        assert_eq!(a.rate_bytes_per_s, 6400.0);
    }

    #[test]
    fn leak_that_stopped_is_a_plateau_not_a_leak() {
        let live = [
            0, 6400, 12800, 19200, 25600, 32000, 32000, 32000, 32000, 32000, 32000,
        ];
        assert_eq!(verdict(&live, 64, 3200), Verdict::Plateau);
    }
}
