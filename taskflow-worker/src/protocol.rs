//! The wire protocol between a parent and its worker processes.
//!
//! Each message is one frame: a little-endian `u32` length of the rest, a
//! little-endian `u32` length of the header, the header (a message below,
//! encoded by [`codec`]), then an opaque payload: a task's
//! encoded arguments, or its encoded output. Frames are bounded by
//! [`MAX_FRAME`]; a larger one is refused before it is read or written.
//!
//! The bytes a worker sends are not trusted: a frame's length only caps what
//! is read, memory is committed as its bytes arrive (in chunks of at most
//! [`READ_CHUNK`], then growing with what was received), and a header that
//! does not decode is [`ProtocolError::Malformed`]. Reading a frame never
//! panics and never allocates much more than the bytes actually received.
//!
//! A worker opens with [`FromWorker::Hello`]: its protocol and codec
//! versions, the fingerprint of its registry, and the list of tasks that
//! fingerprint covers, so a parent refuses a worker from another build
//! before sending it anything and can say which task differs. The parent
//! then sends [`ToWorker::Run`]; while the task runs the worker streams
//! [`FromWorker::Log`] frames and ends with exactly one [`FromWorker::Done`].
//! [`ToWorker::Stop`], or the channel closing, ends the worker.

use std::borrow::Cow;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::failure::TaskError;
use crate::id::{Tags, TaskId};
use crate::log::LogRecord;
use crate::registry::RegisteredTask;

/// Bumped whenever a message changes shape. Version 2: [`FromWorker::Hello`]
/// carries the codec version and the worker's task list.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest frame either side sends or accepts: 256 MiB.
pub const MAX_FRAME: usize = 256 << 20;

/// The most memory a frame gets ahead of its bytes: its body is read into at
/// most this much, then into room growing with what arrived (twice it, at
/// most). A pipe holds 64 KiB, so a small frame is still read in one go.
pub const READ_CHUNK: usize = 64 << 10;

/// Parent to worker. The name is borrowed when sending, owned when received.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker<'a> {
    /// Run one attempt; the payload is the encoded arguments.
    Run {
        /// The task's id.
        id: TaskId,
        /// Its registered name.
        name: Cow<'a, str>,
        /// Zero-based attempt.
        attempt: u32,
        /// Its tags.
        tags: Tags,
    },
    /// Exit after this message.
    Stop,
}

/// Worker to parent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first frame a worker sends, with no payload.
    ///
    /// The parent compares `protocol`, `codec`, then `fingerprint`, and walks
    /// `tasks` only when the fingerprints differ, to name the first task
    /// that differs ([`first_difference`](crate::registry::first_difference)).
    /// The list holds one entry per task of the worker's registry (its name,
    /// executor, argument and output type names), and the frame is bounded by [`MAX_FRAME`] like
    /// any other. A greeting of another protocol version may not decode at
    /// all; the parent then refuses the worker as unreadable.
    Hello {
        /// The worker's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The worker's [`CODEC_VERSION`](crate::codec::CODEC_VERSION).
        codec: u32,
        /// The worker's [`Registry::fingerprint`](crate::Registry::fingerprint).
        fingerprint: u64,
        /// The worker's pid.
        pid: u32,
        /// The worker's [`Registry::tasks`](crate::Registry::tasks), sorted
        /// by name.
        tasks: Vec<RegisteredTask>,
    },
    /// A log record of the running task.
    Log {
        /// The task that logged.
        id: TaskId,
        /// The record.
        record: LogRecord,
    },
    /// The attempt ended. With no failure the payload is the encoded output.
    Done {
        /// The task.
        id: TaskId,
        /// Why the attempt failed, if it did.
        failure: Option<TaskError>,
    },
}

/// A frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The channel failed.
    #[error("worker channel i/o failed")]
    Io(#[from] io::Error),
    /// The other side closed the channel.
    #[error("worker channel closed")]
    Closed,
    /// A frame over [`MAX_FRAME`] (its length prefix says so; nothing more
    /// of it is read).
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame whose header does not decode as the expected message, or
    /// whose header length exceeds the frame.
    #[error("malformed frame")]
    Malformed(#[source] CodecError),
}

/// Encodes a frame: lengths, header, payload.
pub fn encode_frame<H: Serialize>(header: &H, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = Vec::with_capacity(64 + payload.len());
    encode_frame_into(header, payload, &mut frame)?;
    Ok(frame)
}

/// Encodes a frame into `frame`, replacing what it held (a sender that
/// sends many frames reuses one buffer).
pub fn encode_frame_into<H: Serialize>(
    header: &H,
    payload: &[u8],
    frame: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    frame.clear();
    frame.extend_from_slice(&[0; 8]);
    codec::encode_into(header, frame).map_err(ProtocolError::Malformed)?;
    let header_len = frame.len() - 8;
    frame.extend_from_slice(payload);
    let size = frame.len() - 4;
    check_size(size)?;
    frame[0..4].copy_from_slice(&length(size).to_le_bytes());
    frame[4..8].copy_from_slice(&length(header_len).to_le_bytes());
    Ok(())
}

fn length(n: usize) -> u32 {
    // Bounded by MAX_FRAME, which fits.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Splits a frame's body (everything after the first length) into header and payload.
fn decode_body<H: DeserializeOwned>(mut body: Vec<u8>) -> Result<(H, Vec<u8>), ProtocolError> {
    let header_end = header_end(&body, body.len())?;
    let header = codec::decode(&body[4..header_end]).map_err(ProtocolError::Malformed)?;
    // The payload is what follows the header: keep the buffer, drop the front.
    body.drain(..header_end);
    Ok((header, body))
}

/// Where the header ends in a body of `size` bytes that starts as `body`
/// does (its first four bytes are enough).
fn header_end(body: &[u8], size: usize) -> Result<usize, ProtocolError> {
    body.get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .and_then(|len| 4usize.checked_add(len))
        .filter(|&end| end <= size)
        .ok_or_else(|| {
            ProtocolError::Malformed(CodecError::Decode(
                "the frame is shorter than its header length says".into(),
            ))
        })
}

fn check_size(size: usize) -> Result<(), ProtocolError> {
    if size > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            size,
            limit: MAX_FRAME,
        });
    }
    Ok(())
}

/// Writes one frame, blocking.
pub fn write_frame<H: Serialize>(
    writer: &mut impl Write,
    header: &H,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let frame = encode_frame(header, payload)?;
    writer.write_all(&frame)?;
    Ok(())
}

/// Reads one frame, blocking.
///
/// # Errors
///
/// - [`ProtocolError::Closed`] when the stream ends cleanly before a frame;
/// - [`ProtocolError::FrameTooLarge`] when the length prefix exceeds
///   [`MAX_FRAME`], before anything more is read;
/// - [`ProtocolError::Malformed`] when the frame arrived whole but its header
///   does not decode (the sender is broken or hostile);
/// - [`ProtocolError::Io`] when reading fails, including a stream that ends
///   inside a frame (kind `UnexpectedEof`: the sender died mid-write).
pub fn read_frame<H: DeserializeOwned>(
    reader: &mut impl Read,
) -> Result<(H, Vec<u8>), ProtocolError> {
    let mut size = [0; 4];
    match reader.read_exact(&mut size) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtocolError::Closed),
        other => other?,
    }
    let size = u32::from_le_bytes(size) as usize;
    check_size(size)?;
    // The header's length leads the body: one that cannot fit in the frame
    // is refused before the rest is waited for. A garbled stream whose first
    // bytes happen to make a length under the limit then fails at once in
    // most cases, rather than waiting for bytes its sender never meant to
    // send.
    let mut body = Vec::new();
    read_body(reader, &mut body, size.min(4))?;
    header_end(&body, size)?;
    read_body(reader, &mut body, size)?;
    decode_body(body)
}

/// Reads until `body` holds `size` bytes, committing memory only as they
/// arrive: a frame that claims 200 MiB and stops after ten costs
/// [`READ_CHUNK`], not 200 MiB.
fn read_body(reader: &mut impl Read, body: &mut Vec<u8>, size: usize) -> io::Result<()> {
    while body.len() < size {
        let filled = body.len();
        // Doubling keeps a large frame to a few copies; the claimed size
        // caps it, so a whole frame has no spare capacity.
        let next = size.min(filled.saturating_mul(2).max(READ_CHUNK));
        body.reserve_exact(next - filled);
        body.resize(next, 0);
        reader.read_exact(&mut body[filled..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_payload() {
        let id = TaskId::new();
        let run = ToWorker::Run {
            id,
            name: Cow::Borrowed("app::report"),
            attempt: 2,
            tags: Tags::from_pairs([("k", "v")]),
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &run, b"args").unwrap();
        write_frame(&mut wire, &ToWorker::Stop, &[]).unwrap();
        let mut reader = wire.as_slice();
        let (first, payload): (ToWorker<'static>, _) = read_frame(&mut reader).unwrap();
        assert!(matches!(first, ToWorker::Run { id: got, attempt: 2, .. } if got == id));
        assert_eq!(payload, b"args");
        let (second, _): (ToWorker<'static>, _) = read_frame(&mut reader).unwrap();
        assert!(matches!(second, ToWorker::Stop));
        assert!(matches!(
            read_frame::<ToWorker<'static>>(&mut reader),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn a_greeting_carries_the_task_list() {
        let task = RegisteredTask {
            name: Cow::Borrowed("app::compute"),
            executor: crate::Executor::Process,
            arguments: Cow::Borrowed("(u64,)"),
            output: Cow::Borrowed("u64"),
        };
        let hello = FromWorker::Hello {
            protocol: PROTOCOL_VERSION,
            codec: crate::codec::CODEC_VERSION,
            fingerprint: 7,
            pid: 42,
            tasks: vec![task.clone()],
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &hello, &[]).unwrap();
        let (got, payload): (FromWorker, _) = read_frame(&mut wire.as_slice()).unwrap();
        assert!(payload.is_empty());
        let FromWorker::Hello { tasks, pid, .. } = got else {
            panic!("not a greeting: {got:?}");
        };
        assert_eq!((tasks, pid), (vec![task], 42));
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        let result = read_frame::<ToWorker<'static>>(&mut wire.as_slice());
        assert!(matches!(result, Err(ProtocolError::FrameTooLarge { .. })));
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_hang() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &ToWorker::Stop, b"payload").unwrap();
        wire.truncate(wire.len() - 3);
        assert!(matches!(
            read_frame::<ToWorker<'static>>(&mut wire.as_slice()),
            Err(ProtocolError::Io(_))
        ));
    }

    #[test]
    fn a_header_length_past_its_frame_is_refused_before_the_body_arrives() {
        // A frame of 1000 bytes whose header claims 2000, and nothing after:
        // waiting for the body would wait for bytes that never come.
        let mut wire = Vec::new();
        wire.extend_from_slice(&1000u32.to_le_bytes());
        wire.extend_from_slice(&2000u32.to_le_bytes());
        let result = read_frame::<FromWorker>(&mut wire.as_slice());
        assert!(
            matches!(result, Err(ProtocolError::Malformed(CodecError::Decode(_)))),
            "{result:?}"
        );
    }

    /// A reader that hands out `data` and remembers the largest buffer it
    /// was asked to fill: the memory a reader committed ahead of the bytes.
    struct Recording<'a> {
        data: &'a [u8],
        largest_request: usize,
    }

    impl Read for Recording<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest_request = self.largest_request.max(buf.len());
            self.data.read(buf)
        }
    }

    #[test]
    fn a_frame_claiming_more_than_arrives_costs_only_a_chunk() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(200u32 << 20).to_le_bytes());
        wire.extend_from_slice(&[1; 10]);
        let mut reader = Recording {
            data: &wire,
            largest_request: 0,
        };
        let result = read_frame::<FromWorker>(&mut reader);
        assert!(
            matches!(&result, Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{result:?}"
        );
        assert!(
            reader.largest_request <= READ_CHUNK,
            "{}",
            reader.largest_request
        );
    }

    #[test]
    fn a_length_over_the_limit_reads_nothing_more() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(3u32 << 30).to_le_bytes());
        wire.extend_from_slice(b"the rest");
        let mut reader = wire.as_slice();
        let result = read_frame::<FromWorker>(&mut reader);
        assert!(
            matches!(result, Err(ProtocolError::FrameTooLarge { size, limit: MAX_FRAME }) if size == 3 << 30),
            "{result:?}"
        );
        assert_eq!(reader, b"the rest");
    }

    #[test]
    fn a_large_frame_arrives_whole_across_chunks() {
        let payload: Vec<u8> = (0..(5 * READ_CHUNK + 17)).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        write_frame(&mut wire, &ToWorker::Stop, &payload).unwrap();
        let mut reader = Recording {
            data: &wire,
            largest_request: 0,
        };
        let (header, got) = read_frame::<ToWorker<'static>>(&mut reader).unwrap();
        assert!(matches!(header, ToWorker::Stop));
        assert_eq!(got, payload);
        assert!(reader.data.is_empty());
    }

    #[test]
    fn a_header_that_does_not_decode_is_malformed() {
        // ToWorker has two variants; index 7 is none of them.
        for header in [&[7u8][..], &[0, 0x10], &[]] {
            let mut wire = Vec::new();
            wire.extend_from_slice(&(4 + header.len() as u32).to_le_bytes());
            wire.extend_from_slice(&(header.len() as u32).to_le_bytes());
            wire.extend_from_slice(header);
            let result = read_frame::<ToWorker<'static>>(&mut wire.as_slice());
            assert!(
                matches!(result, Err(ProtocolError::Malformed(CodecError::Decode(_)))),
                "{header:?}: {result:?}"
            );
        }
    }

    /// The documented layout of a worker's `Log` and `Done` headers, byte
    /// for byte, so frames can be written by hand (say, to test a parent
    /// against a hostile worker).
    #[test]
    fn log_and_done_headers_have_the_documented_layout() {
        let id = TaskId::new();
        let mut record = LogRecord::new(crate::log::LogLevel::Info, "app", "hi");
        record.at = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        let log = FromWorker::Log { id, record };
        let mut expected = vec![0x01, 0x10];
        expected.extend_from_slice(&id.to_bytes());
        // 1_700_000_000 seconds as a varint, then 5 nanoseconds.
        expected.extend_from_slice(&[0x80, 0xe2, 0xcf, 0xaa, 0x06, 0x05]);
        expected.extend_from_slice(&[0x02, 3, b'a', b'p', b'p', 2, b'h', b'i']);
        // Attempt 0, no fields.
        expected.extend_from_slice(&[0, 0]);
        assert_eq!(codec::encode(&log).unwrap(), expected);

        let frame = encode_frame(&log, b"").unwrap();
        assert_eq!(frame[0..4], (4 + expected.len() as u32).to_le_bytes());
        assert_eq!(frame[4..8], (expected.len() as u32).to_le_bytes());
        assert_eq!(frame[8..], expected);

        let done = FromWorker::Done { id, failure: None };
        let mut expected = vec![0x02, 0x10];
        expected.extend_from_slice(&id.to_bytes());
        expected.push(0x00);
        assert_eq!(codec::encode(&done).unwrap(), expected);

        let failure = Some(TaskError::new(crate::ErrorKind::Panic, "boom"));
        let done = FromWorker::Done { id, failure };
        expected.pop();
        expected.extend_from_slice(&[0x01, 0x01, 4, b'b', b'o', b'o', b'm']);
        assert_eq!(codec::encode(&done).unwrap(), expected);
    }

    #[test]
    fn a_log_whose_string_claims_a_terabyte_is_malformed() {
        for claimed in [1u64 << 40, 1 << 63, u64::MAX] {
            // Log, a task id, a timestamp, Info, then a target claiming `claimed` bytes.
            let mut header = vec![0x01, 0x10];
            header.extend_from_slice(&TaskId::new().to_bytes());
            header.extend_from_slice(&[0x01, 0x00, 0x02]);
            let mut n = claimed;
            while n >= 0x80 {
                header.push(n as u8 | 0x80);
                n >>= 7;
            }
            header.push(n as u8);
            header.extend_from_slice(b"app");
            let mut wire = Vec::new();
            wire.extend_from_slice(&(4 + header.len() as u32).to_le_bytes());
            wire.extend_from_slice(&(header.len() as u32).to_le_bytes());
            wire.extend_from_slice(&header);
            let result = read_frame::<FromWorker>(&mut wire.as_slice());
            assert!(
                matches!(result, Err(ProtocolError::Malformed(CodecError::Decode(_)))),
                "{claimed}: {result:?}"
            );
        }
    }

    #[test]
    fn a_header_longer_than_its_frame_is_malformed() {
        let mut wire = Vec::new();
        // A body of 6 bytes whose header claims 100.
        wire.extend_from_slice(&6u32.to_le_bytes());
        wire.extend_from_slice(&100u32.to_le_bytes());
        wire.extend_from_slice(&[0, 0]);
        let result = read_frame::<ToWorker<'static>>(&mut wire.as_slice());
        assert!(
            matches!(result, Err(ProtocolError::Malformed(CodecError::Decode(_)))),
            "{result:?}"
        );
    }
}
