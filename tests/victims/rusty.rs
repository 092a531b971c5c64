// rusty: a Rust victim on the system allocator. `inventory::Store::leak_orders` leaks boxed
// orders (never dropped); `churn` allocates and drops. Prints what it leaked.
mod inventory {
    #[allow(dead_code)] // written, never read: it only has to take room
    pub struct Order {
        pub id: u64,
        pub payload: [u8; 40],
    }

    pub struct Store;

    impl Store {
        #[inline(never)]
        pub fn leak_orders(n: u64) -> u64 {
            let mut bytes = 0;
            for id in 0..n {
                let o = Box::new(Order { id, payload: [id as u8; 40] });
                bytes += std::mem::size_of::<Order>() as u64;
                std::hint::black_box(&o);
                Box::leak(o);
            }
            bytes
        }

        #[inline(never)]
        pub fn churn(n: u64) {
            for i in 0..n {
                let v: Vec<u64> = (0..(i % 50 + 1)).collect();
                std::hint::black_box(&v);
            }
        }
    }
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let bytes = inventory::Store::leak_orders(n);
    inventory::Store::churn(1000);
    println!("LEAKED leak_orders blocks={n} bytes={bytes}");
}
