//! Criterion bench of the AES-CTR session cipher (src/auth/ctr.rs) in place, at the sizes the
//! transport applies it to: 16 KiB (a socket read or a small chunk) and 1 MiB (a large chunk
//! that, with encryption on, can no longer go out by sendfile and is encrypted in user space).
//!
//! ```text
//! cargo bench --bench auth_cipher
//! ```
//!
//! `Throughput::Bytes` makes criterion print bytes per second next to the time. The crate choice
//! (RustCrypto `aes` + `ctr` over aws-lc-rs) was made on a scratch comparison of both; its
//! numbers are in the commit that added this file. Nothing here asserts a timing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spark_shuffle_agent::auth::{CtrCipher, SessionKey};
use zeroize::Zeroizing;

fn ctr(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth_ctr");
    let iv = [9u8; 16];
    for size in [16 * 1024usize, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size];
        // Version 1's AES-256 (the default) and version 2's AES-128; each keystream runs on
        // across iterations, as a connection's does.
        let keys = [
            ("aes256_v1", SessionKey::Aes256(Zeroizing::new([7; 32]))),
            ("aes128_v2", SessionKey::Aes128(Zeroizing::new([7; 16]))),
        ];
        for (name, key) in keys {
            let mut cipher = CtrCipher::new(&key, &iv);
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| cipher.apply(black_box(&mut buf)))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = ctr
}
criterion_main!(benches);
