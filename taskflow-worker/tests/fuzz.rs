//! Every decoder of bytes from outside the process, fed seeded random and
//! mutated input: it must return, never panic, and never allocate much more
//! than the input it was given.
//!
//! The inputs are valid encodings (worker frames through
//! `protocol::read_frame`, and `codec::decode` of tags, log records, task
//! errors and a few argument-shaped types) mutated the ways that find
//! decoder bugs: bit flips, byte replacement, insertions, deletions,
//! truncation, splicing two encodings, and varints of huge lengths (2^40,
//! 2^63, `u64::MAX`…) written over or into them, plus plain random bytes.
//! One input in sixteen is left valid and must decode, so a decoder that
//! refused everything would fail here too.
//!
//! This binary's allocator counts, per thread, the peak of live bytes and
//! the largest single request during each decode; both must stay within
//! [`bound`]. It runs [`DEFAULT_ITERATIONS`] inputs per decoder from a fixed
//! seed; `TASKFLOW_FUZZ_ITERATIONS` and `TASKFLOW_FUZZ_SEED` make a longer
//! or different run, and a failure prints the seed, the decoder, the
//! iteration and the input in hex. Each input depends only on those three,
//! so `TASKFLOW_FUZZ_ONLY=decoder:iteration` replays exactly one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use taskflow_worker::codec;
use taskflow_worker::protocol::{self, FromWorker, READ_CHUNK, ToWorker};
use taskflow_worker::registry::RegisteredTask;
use taskflow_worker::{ErrorKind, Executor, LogLevel, LogRecord, Tags, TaskError, TaskId};

/// Inputs per decoder by default: a few seconds for the whole file in a
/// debug build.
const DEFAULT_ITERATIONS: u64 = 4_000;

/// The default seed, so CI runs the same inputs every time.
const DEFAULT_SEED: u64 = 0x7a5c_f10e_c0de_0001;

/// Bytes of memory a decode may hold at its peak per byte of input.
///
/// The codec refuses a sequence or map that claims more elements than bytes
/// remain, and tells serde to reserve at most one sequence slot per byte
/// left, or one map entry per two. The largest slot among the types fuzzed
/// here is 48 bytes (a `(String, String)` tag, a `(String, Vec<u32>)` map
/// entry); a `HashMap` rounds its slots up to a power of two at 7/8 load,
/// at most 2.3 slots of 49 bytes per reserved entry, so 56 bytes per input
/// byte. Nested reservations share the bytes they are checked against: a
/// `Vec<Vec<String>>` reaches 48. So 64 holds with the codec's checks, and
/// fails at once without them (a 20-byte input used to reserve a megabyte).
const BYTES_PER_INPUT_BYTE: usize = 64;

/// Allocations any decode may make whatever its input: the boxed error and
/// its message, a hash map's smallest table.
const SLACK: usize = 1 << 10;

/// The most a decode of `input_len` bytes may hold at once, and the largest
/// single allocation it may ask for. Frames add the one chunk a reader
/// commits before the bytes of a body arrive.
fn bound(input_len: usize, frame: bool) -> usize {
    let chunk = if frame { READ_CHUNK } else { 0 };
    BYTES_PER_INPUT_BYTE * input_len + SLACK + chunk
}

// ---------------------------------------------------------------------------
// The counting allocator.

thread_local! {
    // `const` thread-locals of plain integers need no allocation or
    // destructor, so the allocator can use them.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's live bytes, their peak and
/// the largest request.
struct Counting;

fn counted(grow: usize, shrink: usize) {
    // `try_with`, not `with`: an allocator must not panic, even in a thread
    // that is tearing down its locals.
    let _ = LIVE.try_with(|live| {
        // A reallocation holds old and new at once; count both at the peak.
        let during = live.get() + grow as isize;
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(during)));
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(grow)));
        live.set(during - shrink as isize);
    });
}

#[allow(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; this one only forwards to the system's"
)]
// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; the counting touches no allocated memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size(), 0);
        // SAFETY: the caller's `layout` is passed on as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size(), 0);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        counted(0, layout.size());
        // SAFETY: `ptr` came from `System` with this `layout`, as the caller promises.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size, layout.size());
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one call cost above what was live before it.
struct Cost {
    peak: usize,
    largest: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    LARGEST.with(|largest| largest.set(0));
    let value = f();
    let cost = Cost {
        peak: (PEAK.with(Cell::get) - before).max(0) as usize,
        largest: LARGEST.with(Cell::get),
    };
    (value, cost)
}

// ---------------------------------------------------------------------------
// A small seeded generator (splitmix64): reproducible, and all a fuzzer of
// this size needs.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (which is not zero).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// A length, mostly small, sometimes past one varint byte.
    fn length(&mut self) -> usize {
        match self.below(8) {
            0 => 0,
            1..=5 => self.below(12),
            6 => self.below(40),
            _ => 120 + self.below(200),
        }
    }

    fn string(&mut self) -> String {
        const PIECES: &[&str] = &["a", "Z", "0", " ", "é", "中", "🦀", "\n", "\u{0}", "key"];
        let len = self.length();
        (0..len).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    fn strings(&mut self) -> Vec<String> {
        let len = self.length().min(40);
        (0..len).map(|_| self.string()).collect()
    }

    fn id(&mut self) -> TaskId {
        let mut bytes = [0; 16];
        bytes.iter_mut().for_each(|b| *b = self.byte());
        TaskId::from_bytes(bytes)
    }

    fn tags(&mut self) -> Tags {
        let len = self.below(6);
        Tags::from_pairs((0..len).map(|_| (self.string(), self.string())))
    }

    fn record(&mut self) -> LogRecord {
        const LEVELS: [LogLevel; 5] = [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ];
        let level = LEVELS[self.below(LEVELS.len())];
        let mut record = LogRecord::new(level, self.string(), self.string());
        let secs = self.next() >> 30;
        let nanos = self.below(1_000_000_000) as u32;
        record.at = UNIX_EPOCH + Duration::new(secs, nanos);
        record
    }

    fn failure(&mut self) -> TaskError {
        const KINDS: [ErrorKind; 6] = [
            ErrorKind::Error,
            ErrorKind::Panic,
            ErrorKind::Timeout,
            ErrorKind::Cancelled,
            ErrorKind::Interrupted,
            ErrorKind::WorkerDied,
        ];
        TaskError::new(KINDS[self.below(KINDS.len())], self.string())
    }
}

// ---------------------------------------------------------------------------
// The decoders and their valid inputs.

/// One decoder under test.
struct Target {
    name: &'static str,
    /// Whether inputs are whole frames for `read_frame`.
    frame: bool,
    /// A valid input.
    valid: fn(&mut Rng) -> Vec<u8>,
    /// Decodes, returning whether the input was accepted.
    decode: fn(&[u8]) -> bool,
}

type ArgsTuple = (String, Vec<u8>, u64, Option<Vec<String>>);

fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("generated values encode")
}

fn framed<H: Serialize>(header: &H, payload: &[u8]) -> Vec<u8> {
    protocol::encode_frame(header, payload).expect("generated frames encode")
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = rng.length();
    rng.bytes(len)
}

fn decodes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
    codec::decode::<T>(bytes).is_ok()
}

fn from_worker(rng: &mut Rng) -> Vec<u8> {
    let header = match rng.below(3) {
        0 => FromWorker::Hello {
            protocol: rng.next() as u32,
            codec: rng.next() as u32,
            fingerprint: rng.next(),
            pid: rng.next() as u32,
            tasks: (0..rng.below(4))
                .map(|_| RegisteredTask {
                    name: rng.string().into(),
                    executor: Executor::Process,
                    arguments: rng.string().into(),
                    output: rng.string().into(),
                })
                .collect(),
        },
        1 => FromWorker::Log {
            id: rng.id(),
            record: rng.record(),
        },
        _ => FromWorker::Done {
            id: rng.id(),
            failure: rng.chance(2).then(|| rng.failure()),
        },
    };
    let payload = payload(rng);
    framed(&header, &payload)
}

fn to_worker(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(4) {
        return framed(&ToWorker::Stop, &[]);
    }
    let name = rng.string();
    let header = ToWorker::Run {
        id: rng.id(),
        name: name.as_str().into(),
        attempt: rng.next() as u32,
        tags: rng.tags(),
    };
    let args = encoded(&(rng.string(), rng.next()));
    framed(&header, &args)
}

const TARGETS: &[Target] = &[
    Target {
        name: "frame:FromWorker",
        frame: true,
        valid: from_worker,
        decode: |bytes| {
            let mut reader = bytes;
            protocol::read_frame::<FromWorker>(&mut reader).is_ok()
        },
    },
    Target {
        name: "frame:ToWorker",
        frame: true,
        valid: to_worker,
        decode: |bytes| {
            let mut reader = bytes;
            protocol::read_frame::<ToWorker<'static>>(&mut reader).is_ok()
        },
    },
    Target {
        name: "Tags",
        frame: false,
        valid: |rng| encoded(&rng.tags()),
        decode: decodes::<Tags>,
    },
    Target {
        name: "LogRecord",
        frame: false,
        valid: |rng| encoded(&rng.record()),
        decode: decodes::<LogRecord>,
    },
    Target {
        name: "TaskError",
        frame: false,
        valid: |rng| encoded(&rng.failure()),
        decode: decodes::<TaskError>,
    },
    Target {
        name: "Option<TaskError>",
        frame: false,
        valid: |rng| encoded(&rng.chance(2).then(|| rng.failure())),
        decode: decodes::<Option<TaskError>>,
    },
    Target {
        name: "(String, Vec<u8>, u64, Option<Vec<String>>)",
        frame: false,
        valid: |rng| {
            let value: ArgsTuple = (
                rng.string(),
                payload(rng),
                rng.next(),
                rng.chance(2).then(|| rng.strings()),
            );
            encoded(&value)
        },
        decode: decodes::<ArgsTuple>,
    },
    Target {
        name: "HashMap<String, Vec<u32>>",
        frame: false,
        valid: |rng| {
            let len = rng.length().min(30);
            // Encoded as a map, like a HashMap, but in an order the seed fixes.
            let map: BTreeMap<String, Vec<u32>> = (0..len)
                .map(|_| {
                    let values = (0..rng.length()).map(|_| rng.next() as u32).collect();
                    (rng.string(), values)
                })
                .collect();
            encoded(&map)
        },
        decode: decodes::<HashMap<String, Vec<u32>>>,
    },
    Target {
        name: "Vec<Vec<String>>",
        frame: false,
        valid: |rng| {
            let len = rng.length().min(20);
            let nested: Vec<Vec<String>> = (0..len).map(|_| rng.strings()).collect();
            encoded(&nested)
        },
        decode: decodes::<Vec<Vec<String>>>,
    },
];

// ---------------------------------------------------------------------------
// Mutations.

/// Lengths a hostile sender would claim.
const HUGE: &[u64] = &[
    1 << 20,
    (1 << 31) - 1,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    u64::MAX,
    u32::MAX as u64,
    255,
    128,
];

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut Rng, input: &Vec<u8>| rng.below(input.len() + 1);
    match rng.below(9) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, rng.byte()][rng.below(6)];
        }
        2 => {
            let i = at(rng, input);
            let len = 1 + rng.below(8);
            let bytes = rng.bytes(len);
            input.splice(i..i, bytes);
        }
        3 if !input.is_empty() => {
            let i = rng.below(input.len());
            let end = (i + 1 + rng.below(8)).min(input.len());
            input.drain(i..end);
        }
        4 => {
            let len = rng.below(input.len() + 1);
            input.truncate(len);
        }
        5 => {
            // The front of this encoding, the back of another.
            let i = at(rng, input);
            let j = rng.below(other.len() + 1);
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        6 | 7 => {
            // A huge varint over or into the input, where a length may be.
            let huge = varint(HUGE[rng.below(HUGE.len())]);
            let i = at(rng, input);
            if rng.chance(2) {
                let end = (i + huge.len()).min(input.len());
                input.splice(i..end, huge);
            } else {
                input.splice(i..i, huge);
            }
        }
        _ => {
            // A huge little-endian u32 where a frame's lengths may be.
            let value = [u32::MAX, 1 << 31, 200 << 20, 3 << 30, rng.next() as u32][rng.below(5)];
            let i = at(rng, input).min(input.len().saturating_sub(4));
            let end = (i + 4).min(input.len());
            input.splice(i..end, value.to_le_bytes());
        }
    }
}

/// A frame whose header (not its lengths) was mutated, with its lengths made
/// to fit again, so the mutation reaches the header's decoder.
fn mutate_header(rng: &mut Rng, frame: &[u8], other: &[u8]) -> Option<Vec<u8>> {
    let header_len = u32::from_le_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    let header_end = 8 + header_len;
    let mut header = frame.get(8..header_end)?.to_vec();
    let payload = &frame[header_end..];
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        mutate(rng, &mut header, other.get(8..).unwrap_or_default());
    }
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + header.len() + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Some(out)
}

/// The input of `target`'s `iteration`th run, and whether it is valid.
fn make_input(seed: u64, target: usize, iteration: u64) -> (Vec<u8>, bool) {
    let mut rng =
        Rng::new(seed ^ (target as u64).wrapping_mul(0x1000_0000_01b3) ^ iteration.rotate_left(32));
    let t = &TARGETS[target];
    let mut input = (t.valid)(&mut rng);
    match rng.below(16) {
        0 => return (input, true),
        1 => {
            let len = rng.below(64);
            return (rng.bytes(len), false);
        }
        _ => {}
    }
    let other = (t.valid)(&mut rng);
    if t.frame
        && rng.chance(2)
        && let Some(mutated) = mutate_header(&mut rng, &input, &other)
    {
        return (mutated, false);
    }
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        mutate(&mut rng, &mut input, &other);
    }
    (input, false)
}

// ---------------------------------------------------------------------------
// The run.

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// What a decoder made of its inputs, and the costliest one against its bound.
#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    /// (peak / bound, peak, input length)
    closest: (f64, usize, usize),
}

/// Runs `TARGETS[index]` on its `iteration`th input; what went wrong, if anything.
fn run_one(seed: u64, index: usize, iteration: u64, tally: &mut Tally) -> Option<String> {
    let target = &TARGETS[index];
    let (input, valid) = make_input(seed, index, iteration);
    let (outcome, cost) =
        measure(|| panic::catch_unwind(AssertUnwindSafe(|| (target.decode)(&input))));
    let limit = bound(input.len(), target.frame);
    let problem = match outcome {
        Err(_) => "panicked".to_owned(),
        Ok(accepted) => {
            *if accepted {
                &mut tally.accepted
            } else {
                &mut tally.refused
            } += 1;
            let share = cost.peak as f64 / limit as f64;
            if share > tally.closest.0 {
                tally.closest = (share, cost.peak, input.len());
            }
            if valid && !accepted {
                "refused a valid encoding".to_owned()
            } else if cost.peak > limit || cost.largest > limit {
                format!(
                    "held {} bytes at its peak, largest request {} bytes; the bound for {} input bytes is {limit}",
                    cost.peak,
                    cost.largest,
                    input.len()
                )
            } else {
                return None;
            }
        }
    };
    Some(format!(
        "{name}: {problem}\n  replay: TASKFLOW_FUZZ_SEED={seed:#x} TASKFLOW_FUZZ_ONLY='{name}:{iteration}'\n  input ({} bytes): {}",
        input.len(),
        hex(&input),
        name = target.name,
    ))
}

#[test]
fn decoders_of_untrusted_bytes_are_total_and_bounded() {
    let seed = env_u64("TASKFLOW_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let iterations = env_u64("TASKFLOW_FUZZ_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    // Panics are caught and reported with their input below; the default
    // hook still prints each one's message and location first.
    if let Ok(only) = std::env::var("TASKFLOW_FUZZ_ONLY") {
        let (name, iteration) = only
            .rsplit_once(':')
            .and_then(|(name, i)| Some((name, i.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("TASKFLOW_FUZZ_ONLY={only:?} is not `decoder:iteration`"));
        let index = TARGETS
            .iter()
            .position(|target| target.name == name)
            .unwrap_or_else(|| panic!("no decoder is called {name:?}"));
        let failure = run_one(seed, index, iteration, &mut Tally::default());
        assert!(failure.is_none(), "{}", failure.unwrap_or_default());
        return;
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    for (index, target) in TARGETS.iter().enumerate() {
        let mut tally = Tally::default();
        failures.extend((0..iterations).filter_map(|i| run_one(seed, index, i, &mut tally)));
        let (share, peak, len) = tally.closest;
        println!(
            "{:<46} {:>7} accepted {:>7} refused; closest to the bound: {peak} bytes for {len} ({:.0}%)",
            target.name,
            tally.accepted,
            tally.refused,
            share * 100.0
        );
    }
    let ran = iterations * TARGETS.len() as u64;
    println!("seed {seed:#x}: {ran} inputs in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {ran} inputs failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
