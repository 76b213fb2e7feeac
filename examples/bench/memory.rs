//! B9, memory per task: measured in a fresh process (this binary re-executed
//! with [`CHILD_ENV`]` = memory:{pending|finished}:{n}`), so the heap holds
//! nothing from earlier workloads and the resident set grows only for the
//! tasks measured.
//!
//! Two figures per task: the heap bytes live in the allocator (counted by a
//! global allocator that wraps the system one, switched on only in memory
//! children so other workloads pay one relaxed load per allocation), with
//! the number of live allocations; and the growth of the resident set
//! (`VmRSS`), which adds malloc's per-chunk overhead and any memory freed
//! but not returned to the system.
// A `GlobalAlloc` implementation is `unsafe` by definition; this module
// only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use taskflow::{TaskManager, TaskStatus};

use crate::BoxError;
use crate::raw::CHILD_ENV;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);
/// Live allocations by size, in 8-byte classes up to 4 KiB (the last
/// class holds everything larger), to tell what a task's bytes are.
static LIVE_BY_SIZE: [AtomicIsize; SIZE_CLASSES] = [const { AtomicIsize::new(0) }; SIZE_CLASSES];
const SIZE_CLASSES: usize = 4096 / 8 + 1;

fn size_class(size: usize) -> usize {
    (size.div_ceil(8)).min(SIZE_CLASSES - 1)
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn count(bytes: isize, blocks: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(blocks, Ordering::Relaxed);
    }
}

fn count_size(size: usize, blocks: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_BY_SIZE[size_class(size)].fetch_add(blocks, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize, 1);
            count_size(layout.size(), 1);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize, 1);
            count_size(layout.size(), 1);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(pointer, layout) };
        count(-(layout.size() as isize), -1);
        count_size(layout.size(), -1);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            count(new_size as isize - layout.size() as isize, 0);
            count_size(layout.size(), -1);
            count_size(new_size, 1);
        }
        moved
    }
}

/// Live heap bytes and allocations, as counted so far.
fn heap() -> (f64, f64) {
    (
        LIVE_BYTES.load(Ordering::Relaxed) as f64,
        LIVE_BLOCKS.load(Ordering::Relaxed) as f64,
    )
}

fn sizes() -> Vec<isize> {
    LIVE_BY_SIZE
        .iter()
        .map(|class| class.load(Ordering::Relaxed))
        .collect()
}

/// The size classes that grew by at least a tenth of an allocation per
/// task, largest first: `≤512 B ×1.00, ≤96 B ×1.00`.
fn grown_sizes(before: &[isize], tasks: usize) -> String {
    let mut grown: Vec<(usize, f64)> = sizes()
        .iter()
        .zip(before)
        .enumerate()
        .map(|(class, (now, then))| (class, (now - then) as f64 / tasks as f64))
        .filter(|(_, per_task)| *per_task >= 0.1)
        .collect();
    grown.sort_by_key(|(class, _)| std::cmp::Reverse(*class));
    let parts: Vec<String> = grown
        .iter()
        .map(|(class, per_task)| match *class == SIZE_CLASSES - 1 {
            true => format!(">4096B×{per_task:.2}"),
            false => format!("≤{}B×{per_task:.2}", class * 8),
        })
        .collect();
    match parts.is_empty() {
        true => "none".to_owned(),
        false => parts.join(","),
    }
}

/// This process's resident set, in bytes.
fn resident() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib * 1024.0)
}

/// What one memory child measured, per task.
#[derive(Clone, Debug)]
pub(crate) struct PerTask {
    pub(crate) heap: f64,
    pub(crate) blocks: f64,
    pub(crate) resident: f64,
    /// Live allocations per task by size class (see [`grown_sizes`]).
    pub(crate) sizes: String,
}

/// Which state the tasks are held in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    /// PENDING behind a cap of one whose only slot is taken.
    Pending,
    /// SUCCESS, all kept in memory.
    Finished,
    /// SUCCESS, sync tasks: a control, since their records hold no tokio
    /// task handle.
    FinishedSync,
}

impl Held {
    fn name(self) -> &'static str {
        match self {
            Held::Pending => "pending",
            Held::Finished => "finished",
            Held::FinishedSync => "finished_sync",
        }
    }
}

/// Runs one memory child for `tasks` tasks held as `held` and reads its answer.
pub(crate) async fn measure(held: Held, tasks: usize) -> Result<PerTask, BoxError> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .env(CHILD_ENV, format!("memory:{}:{tasks}", held.name()))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .map_err(|_| "the memory child ran for more than 10 minutes")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("per-task "))
        .ok_or_else(|| {
            format!(
                "the memory child answered nothing ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let sizes = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sizes "))
        .unwrap_or("unknown")
        .to_owned();
    match fields[..] {
        [heap, blocks, resident] => Ok(PerTask {
            heap,
            blocks,
            resident,
            sizes,
        }),
        _ => Err(format!("the memory child answered `{line}`").into()),
    }
}

/// The memory child: `spec` is `pending:N` or `finished:N`. Prints
/// `per-task HEAP BLOCKS RESIDENT` and exits.
pub(crate) async fn child(spec: &str) -> Result<(), BoxError> {
    let (held, tasks) = spec
        .split_once(':')
        .ok_or_else(|| format!("bad memory spec `{spec}`"))?;
    let tasks: usize = tasks.parse()?;
    COUNTING.store(true, Ordering::SeqCst);
    let per_task = match held {
        "pending" => pending(tasks).await?,
        "finished" => finished(tasks, false).await?,
        "finished_sync" => finished(tasks, true).await?,
        other => return Err(format!("bad memory spec `{other}`").into()),
    };
    println!(
        "per-task {:.1} {:.2} {:.1}",
        per_task.heap, per_task.blocks, per_task.resident
    );
    println!("sizes {}", per_task.sizes);
    // The manager and its tasks die with the process: nothing to wait for.
    std::process::exit(0)
}

async fn pending(tasks: usize) -> Result<PerTask, BoxError> {
    let manager = TaskManager::builder()
        .max_concurrent_tasks(1)
        .max_finished_in_memory(tasks + 16)
        .build()
        .await?;
    // Takes the only slot for good, so every task after it stays PENDING.
    let _holder = crate::hold::call().enqueue_on(&manager)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while manager.metrics().running == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = before();
    for _ in 0..tasks {
        // Dropped at once: a fire-and-forget enqueue.
        drop(crate::noop::call().enqueue_on(&manager)?);
    }
    settle().await;
    let pending = manager.metrics().count(TaskStatus::Pending);
    if pending != tasks as u64 {
        return Err(format!("expected {tasks} PENDING tasks, found {pending}").into());
    }
    Ok(per_task(before, tasks))
}

async fn finished(tasks: usize, sync: bool) -> Result<PerTask, BoxError> {
    let manager = TaskManager::builder()
        .max_finished_in_memory(tasks + 16)
        .max_sync_threads(2)
        .build()
        .await?;
    let before = before();
    for _ in 0..tasks {
        match sync {
            true => drop(crate::noop_blocking::call().enqueue_on(&manager)?),
            false => drop(crate::noop::call().enqueue_on(&manager)?),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while manager.metrics().success < tasks as u64 {
        if Instant::now() > deadline {
            return Err("the tasks did not finish within 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settle().await;
    Ok(per_task(before, tasks))
}

/// Waits until the live heap stops moving (spawned tasks polled, queues
/// drained), at most two seconds.
async fn settle() {
    let mut last = heap().0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = heap().0;
        if (now - last).abs() <= 64.0 * 1024.0 {
            break;
        }
        last = now;
    }
}

/// What is counted before the tasks are enqueued.
struct Before {
    heap: (f64, f64),
    resident: f64,
    sizes: Vec<isize>,
}

fn before() -> Before {
    Before {
        heap: heap(),
        resident: resident(),
        sizes: sizes(),
    }
}

fn per_task(before: Before, tasks: usize) -> PerTask {
    let ((bytes, blocks), resident_before) = (before.heap, before.resident);
    let ((bytes_now, blocks_now), resident_now) = (heap(), resident());
    let n = tasks as f64;
    PerTask {
        heap: (bytes_now - bytes) / n,
        blocks: (blocks_now - blocks) / n,
        resident: (resident_now - resident_before) / n,
        sizes: grown_sizes(&before.sizes, tasks),
    }
}
