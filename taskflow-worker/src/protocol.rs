//! The wire protocol between a parent and its worker processes.
//!
//! Each message is one frame: a little-endian `u32` length of the rest, a
//! little-endian `u32` length of the header, the header (a message below,
//! encoded by [`codec`]), then an opaque payload: a task's
//! encoded arguments, or its encoded output. Frames are bounded by
//! [`MAX_FRAME`]; a larger one is refused before it is read or written.
//!
//! A worker opens with [`FromWorker::Hello`] (protocol and codec versions,
//! fingerprint of its registry, pid). The parent sends [`ToWorker::Run`]; while the task
//! runs the worker streams [`FromWorker::Log`] frames and ends with exactly
//! one [`FromWorker::Done`]. [`ToWorker::Stop`], or the channel closing, ends
//! the worker.

use std::borrow::Cow;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::failure::TaskError;
use crate::id::{Tags, TaskId};
use crate::log::LogRecord;

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest frame either side sends or accepts: 256 MiB.
pub const MAX_FRAME: usize = 256 << 20;

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
    /// The first frame a worker sends.
    Hello {
        /// The worker's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The worker's [`CODEC_VERSION`](crate::codec::CODEC_VERSION).
        codec: u32,
        /// The worker's [`Registry::fingerprint`](crate::Registry::fingerprint).
        fingerprint: u64,
        /// The worker's pid.
        pid: u32,
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
    /// A frame over [`MAX_FRAME`].
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame whose header is malformed.
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
    let header_len = body
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let header_end = header_len
        .and_then(|len| 4usize.checked_add(len))
        .filter(|&end| end <= body.len())
        .ok_or_else(|| {
            ProtocolError::Malformed(CodecError::Decode(
                "the frame is shorter than its header length says".into(),
            ))
        })?;
    let header = codec::decode(&body[4..header_end]).map_err(ProtocolError::Malformed)?;
    // The payload is what follows the header: keep the buffer, drop the front.
    body.drain(..header_end);
    Ok((header, body))
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

/// Reads one frame, blocking; [`ProtocolError::Closed`] at a clean end of stream.
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
    let mut body = vec![0; size];
    reader.read_exact(&mut body)?;
    decode_body(body)
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
