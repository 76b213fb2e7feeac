//! The raw primitives taskflow stands on, as the baselines measure them.
//!
//! - A bare length-prefixed pipe echo to a child that is this binary
//!   re-executed with [`CHILD_ENV`]` = echo`: the child greets with one
//!   frame, then answers every frame `[u32 little-endian length][payload]`
//!   with the same frame, until its stdin closes. The parent side comes in
//!   a thread-per-child version (blocking pipes) and a tokio version.
//! - A bare pool of `n` std threads fed by one crossbeam channel, each job
//!   answering on a oneshot channel (the same no-op, joined).
//!
//! Every child is killed and reaped when its handle drops, so no loop here
//! outlives the benchmark.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// Set to `echo` in a raw echo child, `memory:…` in a memory child.
pub(crate) const CHILD_ENV: &str = "TASKFLOW_BENCH_CHILD";

const HELLO: &[u8] = b"hello";

/// The echo child's loop: greet, then echo frames until stdin closes.
pub(crate) fn serve_echo() -> ! {
    // Raw descriptors, not `Stdout`'s line buffering: one write per frame.
    let files = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|input| Ok((input, std::io::stdout().as_fd().try_clone_to_owned()?)));
    let Ok((input, output)) = files else {
        std::process::exit(2)
    };
    let mut input = BufReader::new(std::fs::File::from(input));
    let mut output = std::fs::File::from(output);
    if write_frame(&mut output, HELLO).is_err() {
        std::process::exit(2);
    }
    let mut buffer = Vec::new();
    let mut frame = Vec::new();
    while let Ok(true) = read_frame(&mut input, &mut buffer) {
        frame.clear();
        frame.extend_from_slice(&(buffer.len() as u32).to_le_bytes());
        frame.extend_from_slice(&buffer);
        if output.write_all(&frame).is_err() {
            break;
        }
    }
    std::process::exit(0)
}

fn write_frame(writer: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    writer.write_all(&frame)
}

/// Reads one frame into `buffer`; `false` at a clean end of stream.
fn read_frame(reader: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<bool> {
    let mut length = [0; 4];
    match reader.read_exact(&mut length) {
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        other => other?,
    }
    buffer.resize(u32::from_le_bytes(length) as usize, 0);
    reader.read_exact(buffer)?;
    Ok(true)
}

fn echo_command() -> io::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(CHILD_ENV, "echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(command)
}

fn broken(what: &str) -> io::Error {
    io::Error::other(format!("the echo child {what}"))
}

/// An echo child driven with blocking pipes.
pub(crate) struct EchoChild {
    child: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
    buffer: Vec<u8>,
}

impl EchoChild {
    /// Starts a child and reads its greeting.
    pub(crate) fn spawn() -> io::Result<Self> {
        let mut child = echo_command()?.spawn()?;
        let input = child.stdin.take().ok_or_else(|| broken("has no stdin"))?;
        let output = child.stdout.take().ok_or_else(|| broken("has no stdout"))?;
        let mut echo = EchoChild {
            child,
            input: Some(input),
            output: BufReader::new(output),
            buffer: Vec::new(),
        };
        if !read_frame(&mut echo.output, &mut echo.buffer)? || echo.buffer != HELLO {
            return Err(broken("did not greet"));
        }
        Ok(echo)
    }

    /// Sends `payload` and reads it back.
    pub(crate) fn round_trip(&mut self, payload: &[u8]) -> io::Result<()> {
        let input = self.input.as_mut().ok_or_else(|| broken("is closed"))?;
        write_frame(input, payload)?;
        if !read_frame(&mut self.output, &mut self.buffer)? || self.buffer != payload {
            return Err(broken("answered wrongly"));
        }
        Ok(())
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        drop(self.input.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An echo child driven with tokio's pipes.
struct TokioEchoChild {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::BufReader<tokio::process::ChildStdout>,
    buffer: Vec<u8>,
}

impl TokioEchoChild {
    async fn spawn() -> io::Result<Self> {
        let mut command = tokio::process::Command::from(echo_command()?);
        command.kill_on_drop(true);
        let mut child = command.spawn()?;
        let input = child.stdin.take().ok_or_else(|| broken("has no stdin"))?;
        let output = child.stdout.take().ok_or_else(|| broken("has no stdout"))?;
        let mut echo = TokioEchoChild {
            child,
            input,
            output: tokio::io::BufReader::new(output),
            buffer: Vec::new(),
        };
        echo.read().await?;
        if echo.buffer != HELLO {
            return Err(broken("did not greet"));
        }
        Ok(echo)
    }

    async fn read(&mut self) -> io::Result<()> {
        let length = self.output.read_u32_le().await?;
        self.buffer.resize(length as usize, 0);
        self.output.read_exact(&mut self.buffer).await?;
        Ok(())
    }

    async fn round_trip(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        self.input.write_all(&frame).await?;
        self.read().await?;
        if self.buffer != payload {
            return Err(broken("answered wrongly"));
        }
        Ok(())
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `total` round trips spread evenly over `children` children, each driven
/// by its own thread. Blocking: call it off the runtime.
pub(crate) fn echo_threads(children: usize, total: usize) -> io::Result<Duration> {
    let mut echoes = (0..children)
        .map(|_| EchoChild::spawn())
        .collect::<io::Result<Vec<_>>>()?;
    let per_child = total / children;
    let start = Instant::now();
    std::thread::scope(|scope| {
        let drivers: Vec<_> = echoes
            .iter_mut()
            .map(|echo| {
                scope.spawn(move || {
                    (0..per_child as u64).try_for_each(|n| echo.round_trip(&n.to_le_bytes()))
                })
            })
            .collect();
        drivers.into_iter().try_for_each(|driver| {
            driver
                .join()
                .unwrap_or_else(|_| Err(broken("driver panicked")))
        })
    })?;
    Ok(start.elapsed())
}

/// As [`echo_threads`], each child driven by a tokio task.
pub(crate) async fn echo_tokio(children: usize, total: usize) -> io::Result<Duration> {
    let mut echoes = Vec::with_capacity(children);
    for _ in 0..children {
        echoes.push(TokioEchoChild::spawn().await?);
    }
    let per_child = total / children;
    let start = Instant::now();
    let mut drivers = tokio::task::JoinSet::new();
    for mut echo in echoes {
        drivers.spawn(async move {
            for n in 0..per_child as u64 {
                echo.round_trip(&n.to_le_bytes()).await?;
            }
            Ok::<_, io::Error>(echo)
        });
    }
    let mut finished = Vec::with_capacity(children);
    while let Some(driver) = drivers.join_next().await {
        finished.push(driver.map_err(|_| broken("driver panicked"))??);
    }
    let elapsed = start.elapsed();
    for echo in finished {
        echo.stop().await;
    }
    Ok(elapsed)
}

/// Each of `rounds` sequential round trips to one child, blocking pipes.
pub(crate) fn latency_threads(rounds: usize) -> io::Result<Vec<Duration>> {
    let mut echo = EchoChild::spawn()?;
    for n in 0..100u64 {
        echo.round_trip(&n.to_le_bytes())?;
    }
    (0..rounds as u64)
        .map(|n| {
            let start = Instant::now();
            echo.round_trip(&n.to_le_bytes())?;
            Ok(start.elapsed())
        })
        .collect()
}

/// As [`latency_threads`], through tokio's pipes.
pub(crate) async fn latency_tokio(rounds: usize) -> io::Result<Vec<Duration>> {
    let mut echo = TokioEchoChild::spawn().await?;
    for n in 0..100u64 {
        echo.round_trip(&n.to_le_bytes()).await?;
    }
    let mut samples = Vec::with_capacity(rounds);
    for n in 0..rounds as u64 {
        let start = Instant::now();
        echo.round_trip(&n.to_le_bytes()).await?;
        samples.push(start.elapsed());
    }
    echo.stop().await;
    Ok(samples)
}

/// Spawn of a bare child, its greeting and one echo. Blocking.
pub(crate) fn cold_start() -> io::Result<Duration> {
    let start = Instant::now();
    let mut echo = EchoChild::spawn()?;
    echo.round_trip(&7u64.to_le_bytes())?;
    Ok(start.elapsed())
}

type Job = Box<dyn FnOnce() + Send>;

/// `size` std threads taking jobs from one channel.
pub(crate) struct BarePool {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl BarePool {
    pub(crate) fn new(size: usize) -> io::Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..size)
            .map(|n| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("bare-pool-{n}"))
                    .spawn(move || {
                        while let Ok(job) = queue.recv() {
                            job();
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BarePool {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Runs `job` on the pool; the receiver resolves when it has run.
    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) -> oneshot::Receiver<()> {
        let (done, finished) = oneshot::channel();
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Box::new(move || {
                job();
                let _ = done.send(());
            }));
        }
        finished
    }
}

impl Drop for BarePool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
