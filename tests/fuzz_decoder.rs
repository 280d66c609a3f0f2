//! Fuzzing the decoder (issue 15): the path from bytes found in Redis to a
//! value (`envelope::read_value`: size check, envelope header, codec), with
//! a seeded, stable-Rust mutation fuzzer (cargo-fuzz needs nightly).
//!
//! Inputs, drawn from one seed per run (printed, and `FUZZ_SEED=` replays
//! it): random bytes, with and without a valid header; real envelopes of
//! several value shapes truncated, bit-flipped, byte-overwritten, spliced
//! and extended; huge length prefixes (varint, fixed and JSON) where a
//! sequence, string or map length goes; values of another type; headers
//! with other magic, versions and inconsistent instants.
//!
//! Checked for every input: no panic; no allocation past the configured
//! limit (the global allocator below refuses any allocation that would
//! take the bytes in use past the harness's baseline plus
//! `BINCODE_DECODE_LIMIT`, which aborts the run); a truncated envelope or
//! one with a huge length prefix is never accepted; a refused input is an
//! `Err`, which `Inner::decode` counts in `Stats::decode_errors` (checked
//! through the public API in `tests/cache.rs`, `decode_errors_*`). The
//! peak of bytes in use is printed.
//!
//! ```text
//! cargo test --all-features --test fuzz_decoder                      # 20,000 inputs per codec (suite)
//! cargo test --release --all-features --test fuzz_decoder -- --ignored --nocapture   # 1,000,000 per codec
//! ```
//! `FUZZ_INPUTS=n` changes the ignored run's count per codec.

use herdcache::__fuzz::{HEADER_LEN, envelope, read};
use herdcache::{BINCODE_DECODE_LIMIT, Codec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Counts (and caps) the bytes in use, with no `unsafe` of ours.
#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const NOW_MS: u64 = 1_800_000_000_000;
const MAX_VALUE_SIZE: usize = 8 << 20; // the builder's default

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Plain,
    Sized(u16),
    Named { x: i32, label: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price: f64,
    stock: Option<u32>,
    tags: Vec<String>,
    attrs: BTreeMap<String, i64>,
    kind: Kind,
    blob: Vec<u8>,
    nested: Vec<Vec<u16>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Other {
    a: i32,
    b: bool,
    c: String,
}

fn product(rng: &mut fastrand::Rng) -> Product {
    let word = |rng: &mut fastrand::Rng| -> String {
        (0..rng.usize(0..12)).map(|_| rng.alphanumeric()).collect()
    };
    Product {
        id: rng.u64(..),
        name: word(rng),
        price: rng.f64() * 1000.0,
        stock: rng.bool().then(|| rng.u32(..)),
        tags: (0..rng.usize(0..4)).map(|_| word(rng)).collect(),
        attrs: (0..rng.usize(0..4))
            .map(|_| (word(rng), rng.i64(..)))
            .collect(),
        kind: match rng.u8(0..3) {
            0 => Kind::Plain,
            1 => Kind::Sized(rng.u16(..)),
            _ => Kind::Named {
                x: rng.i32(..),
                label: word(rng),
            },
        },
        blob: (0..rng.usize(0..32)).map(|_| rng.u8(..)).collect(),
        nested: (0..rng.usize(0..3))
            .map(|_| (0..rng.usize(0..4)).map(|_| rng.u16(..)).collect())
            .collect(),
    }
}

/// A valid envelope of a random value: a `Product` mostly, else another
/// type (so that decoding as `Product` reads a value of another type).
fn real_envelope<C: Codec>(codec: &C, rng: &mut fastrand::Rng) -> (Vec<u8>, bool) {
    let mut payload = Vec::new();
    let is_product = rng.u8(0..4) != 0;
    if is_product {
        codec.encode(&product(rng), &mut payload).unwrap();
    } else {
        match rng.u8(0..4) {
            0 => codec
                .encode(
                    &Other {
                        a: rng.i32(..),
                        b: rng.bool(),
                        c: "other".into(),
                    },
                    &mut payload,
                )
                .unwrap(),
            1 => codec.encode(&rng.u64(..), &mut payload).unwrap(),
            2 => codec
                .encode(&vec![rng.u64(..); rng.usize(0..20)], &mut payload)
                .unwrap(),
            _ => codec.encode(&"a plain string", &mut payload).unwrap(),
        }
    }
    let fresh = NOW_MS + rng.u64(1..60_000);
    (
        envelope(fresh, fresh + rng.u64(0..60_000), &payload),
        is_product,
    )
}

/// A length prefix claiming far more elements or bytes than any input
/// holds, in each codec's spelling.
fn huge_prefix(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(0..6) {
        // bincode varint: 0xfd + u64, 0xfc + u32, 0xfb + u16
        0 => {
            let mut v = vec![0xfd];
            v.extend_from_slice(&rng.u64((1 << 40)..).to_le_bytes());
            v
        }
        1 => {
            let mut v = vec![0xfc];
            v.extend_from_slice(&rng.u32((1 << 24)..).to_le_bytes());
            v
        }
        // postcard varint (LEB128) of a huge number
        2 => vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        3 => vec![0xff, 0xff, 0xff, 0xff, 0x0f],
        // fixed-width u64
        4 => u64::MAX.to_le_bytes().to_vec(),
        // a JSON array that claims nothing but nests deep
        _ => vec![b'['; rng.usize(1..4096)],
    }
}

#[derive(Default, Debug)]
struct Tally {
    inputs: u64,
    accepted: u64,
    expired: u64,
    too_large: u64,
    envelope: u64,
    codec: u64,
    panics: u64,
}

/// One input through the decoder, as `Product`. `must_fail`: an input no
/// correct decoder may accept.
fn check<C: Codec>(codec: &C, bytes: &[u8], must_fail: bool, tally: &mut Tally) {
    tally.inputs += 1;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read::<Product, C>(codec, bytes, MAX_VALUE_SIZE, NOW_MS)
    }));
    match result {
        Err(_) => {
            tally.panics += 1;
            eprintln!(
                "PANIC on {} bytes: {:02x?}",
                bytes.len(),
                &bytes[..bytes.len().min(256)]
            );
        }
        Ok(Ok(Some(_))) => {
            assert!(
                !must_fail,
                "accepted an input that must fail ({} bytes): {:02x?}",
                bytes.len(),
                &bytes[..bytes.len().min(256)]
            );
            tally.accepted += 1;
        }
        Ok(Ok(None)) => tally.expired += 1,
        Ok(Err("too_large")) => tally.too_large += 1,
        Ok(Err("envelope")) => tally.envelope += 1,
        Ok(Err(_)) => tally.codec += 1,
    }
}

/// `n` inputs from `seed` through `codec`.
fn fuzz<C: Codec>(codec: &C, seed: u64, n: u64) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tally = Tally::default();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    while tally.inputs < n {
        buf.clear();
        let mut must_fail = false;
        match rng.u8(0..10) {
            // Random bytes, any length up to 4 KiB.
            0 => buf.extend((0..rng.usize(0..4096)).map(|_| rng.u8(..))),
            // A valid header, then random bytes.
            1 => {
                let fresh = NOW_MS + rng.u64(1..1000);
                buf.extend_from_slice(&envelope(fresh, fresh + 10, &[]));
                buf.extend((0..rng.usize(0..512)).map(|_| rng.u8(..)));
            }
            // A real envelope, truncated (never a valid value).
            // (A prefix of a `Product`'s encoding is read the same way as
            // the whole until the bytes run out, so it cannot decode.)
            2 => {
                let (real, is_product) = real_envelope(codec, &mut rng);
                let cut = rng.usize(0..real.len());
                buf.extend_from_slice(&real[..cut]);
                must_fail = is_product;
            }
            // A real envelope with 1-8 bits flipped.
            3 => {
                let (real, _) = real_envelope(codec, &mut rng);
                buf.extend_from_slice(&real);
                for _ in 0..rng.usize(1..=8) {
                    let i = rng.usize(0..buf.len());
                    buf[i] ^= 1 << rng.u8(0..8);
                }
            }
            // A real envelope with random bytes overwritten in the payload.
            4 => {
                let (real, _) = real_envelope(codec, &mut rng);
                buf.extend_from_slice(&real);
                if buf.len() > HEADER_LEN {
                    for _ in 0..rng.usize(1..=4) {
                        let i = rng.usize(HEADER_LEN..buf.len());
                        buf[i] = rng.u8(..);
                    }
                }
            }
            // A huge length prefix spliced into a real payload (where a
            // length is read, a claim far beyond the input), or alone.
            5 => {
                let (real, _) = real_envelope(codec, &mut rng);
                let at = rng.usize(HEADER_LEN..=real.len());
                buf.extend_from_slice(&real[..at]);
                buf.extend_from_slice(&huge_prefix(&mut rng));
                if rng.bool() {
                    buf.extend_from_slice(&real[at..]);
                }
            }
            6 => {
                let fresh = NOW_MS + rng.u64(1..1000);
                // Only a length: whatever it is read as, the bytes it
                // claims are not there.
                buf.extend_from_slice(&envelope(fresh, fresh, &huge_prefix(&mut rng)));
                must_fail = true;
            }
            // A value of another type, or a real product (the control).
            7 => {
                let (real, _) = real_envelope(codec, &mut rng);
                buf.extend_from_slice(&real);
            }
            // Header damage: magic, version, instants (inconsistent or expired).
            8 => {
                let (real, _) = real_envelope(codec, &mut rng);
                buf.extend_from_slice(&real);
                match rng.u8(0..4) {
                    0 => buf[0] = rng.u8(..),
                    1 => buf[1] = rng.u8(..),
                    2 => buf[16..24].copy_from_slice(&rng.u64(..NOW_MS).to_le_bytes()),
                    _ => buf[8..16].copy_from_slice(&rng.u64(..).to_le_bytes()),
                }
            }
            // Two real payloads spliced, or one with junk appended.
            _ => {
                let (a, _) = real_envelope(codec, &mut rng);
                let (b, _) = real_envelope(codec, &mut rng);
                let cut = rng.usize(HEADER_LEN..=a.len());
                buf.extend_from_slice(&a[..cut]);
                let from = rng.usize(HEADER_LEN..=b.len());
                buf.extend_from_slice(&b[from..]);
            }
        }
        check(codec, &buf, must_fail, &mut tally);
    }
    // Oversized input: refused before any decoding (with a small
    // `max_value_size`, so that the input itself does not set the peak).
    let big = vec![0xC4; HEADER_LEN + 4097];
    assert_eq!(
        read::<Product, C>(codec, &big, 4096, NOW_MS).err(),
        Some("too_large")
    );
    tally.inputs += 1;
    tally.too_large += 1;
    tally
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Fuzzes one codec: `(seed, inputs)`.
type Runner = Box<dyn Fn(u64, u64) -> Tally>;

/// Runs every codec compiled in; returns the tallies, asserting no panic.
fn run_all(n: u64) {
    let seed = seed();
    let baseline = ALLOC.allocated();
    // Any allocation past this makes the allocator fail, which aborts.
    ALLOC
        .set_limit(baseline + BINCODE_DECODE_LIMIT)
        .expect("set the allocation cap");
    println!(
        "seed {seed} (FUZZ_SEED={seed} replays it); cap: baseline {baseline} B + {} MiB",
        BINCODE_DECODE_LIMIT >> 20
    );
    #[allow(unused_mut)] // without the postcard and json features
    let mut codecs: Vec<(&str, Runner)> =
        vec![("bincode", Box::new(|s, n| fuzz(&herdcache::Bincode, s, n)))];
    #[cfg(feature = "postcard")]
    codecs.push((
        "postcard",
        Box::new(|s, n| fuzz(&herdcache::Postcard, s, n)),
    ));
    #[cfg(feature = "json")]
    codecs.push(("json", Box::new(|s, n| fuzz(&herdcache::Json, s, n))));
    let mut panics = 0;
    for (name, run) in &codecs {
        let started = Instant::now();
        let tally = run(seed, n);
        println!(
            "{name}: {} inputs in {:.1} s, {} panics; accepted {}, expired {}, refused: too large {}, \
             not an envelope {}, codec {}; peak in use {} KiB above baseline so far",
            tally.inputs,
            started.elapsed().as_secs_f64(),
            tally.panics,
            tally.accepted,
            tally.expired,
            tally.too_large,
            tally.envelope,
            tally.codec,
            ALLOC.max_allocated().saturating_sub(baseline) / 1024,
        );
        // Both outcomes must be reached, or the generator is broken.
        assert!(tally.accepted > 0 && tally.codec > 0, "{tally:?}");
        panics += tally.panics;
    }
    ALLOC.set_limit(usize::MAX).expect("lift the cap");
    assert_eq!(panics, 0, "the decoder panicked (seed {seed})");
}

/// The suite's share: 20,000 inputs per codec.
#[test]
fn decoder_survives_bad_input() {
    run_all(20_000);
}

/// The separate 1,000,000-input run (see the module docs for the command).
#[test]
#[ignore = "1,000,000 inputs per codec: run with --release -- --ignored"]
fn decoder_survives_a_million_inputs() {
    let n = std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    run_all(n);
}
