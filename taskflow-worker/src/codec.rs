//! The one place that knows the byte format of arguments, results and frames.
//!
//! Values are encoded with [postcard] through serde. The format is compact and
//! not self-describing: integers wider than a byte are LEB128 varints (signed
//! ones zigzag-encoded first), a `u8` or `i8` is one byte, floats are their
//! 4 or 8 little-endian bytes, a `bool` or an `Option` tag is one byte (`0`
//! or `1`), an enum is its variant index as a varint followed by the
//! variant's fields, strings (and a `char`), byte strings, sequences and maps
//! are a varint length followed by their bytes or elements, structs and
//! tuples are their fields in order with nothing between them, and `()` or a
//! unit struct is nothing at all. A
//! task's arguments are the concatenation of each argument's encoding, which
//! is exactly how the format encodes the tuple of them, so the runner decodes
//! one tuple. Swapping the format means changing this module alone (and
//! bumping [`CODEC_VERSION`]).
//!
//! Since the format does not say what comes next, a serde shape that needs it
//! to (`#[serde(untagged)]`, `#[serde(flatten)]`, anything calling
//! `deserialize_any`) cannot come back. [`ArgsWriter::push`] therefore decodes
//! every argument it encodes, so such a value is refused when it is enqueued
//! rather than failing later in a worker or after a restart.
//!
//! Bytes to decode come from outside this process's memory (a worker's
//! frames, rows read back from the store), so [`decode`] is total: malformed
//! input is a [`CodecError`], never a panic, and decoding allocates in
//! proportion to the bytes present rather than to the lengths they claim.
//! postcard reads the scalars; a thin layer of ours reads the structure
//! around them and checks it first (see `codec/bounded.rs`): a sequence or
//! map may not claim more elements than bytes remain, so the length serde
//! preallocates from is never more than the input could fill, and values
//! nest at most 128 levels, so a recursive type cannot exhaust the stack. A
//! wrapper of the deserializer, because a postcard flavor alone sees bytes,
//! not which of them are lengths (ours only shares the input's cursor with
//! the checks), and postcard by itself hands a map's claimed length to serde
//! unchecked. The one valid value this refuses is a
//! sequence of elements that encode to nothing (`Vec<()>`) longer than the
//! bytes after it; [`ArgsWriter`] refuses it at enqueue like the shapes above.

mod bounded;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bumped whenever the byte format of values changes; part of the worker
/// handshake, so a worker that encodes differently is refused before any
/// task is sent to it. Version 1 was bincode 2; version 2 is postcard 1.
pub const CODEC_VERSION: u32 = 2;

/// A value could not be turned into bytes, or back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value's `Serialize` implementation failed, or asked for something
    /// the format cannot express (a map or sequence of unknown length, as
    /// `#[serde(flatten)]` produces).
    #[error("cannot encode value")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The bytes do not decode as the expected type, or the type's
    /// `Deserialize` needs a self-describing format (`#[serde(untagged)]`,
    /// `deserialize_any`).
    #[error("cannot decode value")]
    Decode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The value decoded but did not use all the bytes.
    #[error("{extra} bytes left over after decoding")]
    TrailingBytes {
        /// How many bytes were not consumed.
        extra: usize,
    },
    /// The value encoded, but decoding the bytes consumed a different length:
    /// its `Serialize` and `Deserialize` disagree.
    #[error("value does not decode to what was encoded ({encoded} bytes written, {decoded} read)")]
    RoundTrip {
        /// Bytes written by encoding.
        encoded: usize,
        /// Bytes consumed by decoding them.
        decoded: usize,
    },
}

/// Encodes `value`.
///
/// # Errors
///
/// [`CodecError::Encode`] when the value cannot be expressed in the format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Appends the encoding of `value` to `buf`.
///
/// # Errors
///
/// [`CodecError::Encode`] when the value cannot be expressed in the format;
/// `buf` may then hold a partial encoding past its old length.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    postcard::serialize_with_flavor(value, Append(buf)).map_err(|e| CodecError::Encode(Box::new(e)))
}

/// A postcard output that appends to a caller's buffer, so a frame's header
/// lands behind its lengths without a copy.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes a `T` that must use all of `bytes`.
///
/// # Errors
///
/// [`CodecError::Decode`] for bytes that are not a `T`,
/// [`CodecError::TrailingBytes`] when some are left over.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = decode_prefix(bytes)?;
    match bytes.len() - read {
        0 => Ok(value),
        extra => Err(CodecError::TrailingBytes { extra }),
    }
}

/// Decodes a `T` from the front of `bytes`, returning it and the bytes used.
fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bounded::take_from_bytes(bytes).map_err(|e| CodecError::Decode(Box::new(e)))
}

/// Builds the encoded arguments of one call, checking that each comes back.
///
/// Generated code pushes every argument in order; the first one that fails is
/// remembered with its name and the rest are skipped.
///
/// ```
/// use taskflow_worker::codec::{self, ArgsWriter};
/// let mut args = ArgsWriter::new();
/// args.push("to", &"ada@example.com".to_string());
/// args.push("attempts", &3u32);
/// let bytes = args.finish().unwrap();
/// let (to, attempts): (String, u32) = codec::decode(&bytes).unwrap();
/// assert_eq!((to.as_str(), attempts), ("ada@example.com", 3));
/// ```
#[derive(Debug, Default)]
pub struct ArgsWriter {
    buf: Vec<u8>,
    failed: Option<(&'static str, CodecError)>,
}

impl ArgsWriter {
    /// An empty argument list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `value`, the argument called `name`, after checking that its
    /// encoding decodes to the same length.
    pub fn push<T: Serialize + DeserializeOwned>(&mut self, name: &'static str, value: &T) {
        if self.failed.is_some() {
            return;
        }
        let start = self.buf.len();
        let checked = encode_into(value, &mut self.buf).and_then(|()| {
            let encoded = self.buf.len() - start;
            let (_, decoded) = decode_prefix::<T>(&self.buf[start..])?;
            match decoded == encoded {
                true => Ok(()),
                false => Err(CodecError::RoundTrip { encoded, decoded }),
            }
        });
        if let Err(error) = checked {
            self.buf.truncate(start);
            self.failed = Some((name, error));
        }
    }

    /// The encoded arguments.
    ///
    /// # Errors
    ///
    /// The name of the first argument that could not be encoded, with why.
    pub fn finish(self) -> Result<Vec<u8>, (&'static str, CodecError)> {
        match self.failed {
            None => Ok(self.buf),
            Some(failed) => Err(failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(untagged)]
    enum Untagged {
        Number(u32),
        Text(String),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Inner {
        a: u32,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Flattened {
        #[serde(flatten)]
        inner: Inner,
        b: u32,
    }

    #[test]
    fn the_format_is_the_documented_one() {
        // 300 as a LEB128 varint, -1 zigzagged, a length-prefixed string, an
        // option tag and a bool, an enum's variant index, a u8 as itself.
        let bytes = encode(&(300u32, -1i32, "hi", Some(true), Option::<u8>::None, 255u8)).unwrap();
        assert_eq!(
            bytes,
            [0xac, 0x02, 0x01, 0x02, b'h', b'i', 0x01, 0x01, 0x00, 0xff]
        );
        #[derive(Serialize)]
        enum Shape {
            _Empty,
            Square(u8),
        }
        assert_eq!(encode(&Shape::Square(4)).unwrap(), [0x01, 0x04]);
    }

    #[test]
    fn values_round_trip() {
        let value = (
            "ada".to_owned(),
            vec![0u8, 1, 255],
            u64::MAX,
            Some(vec!["é".to_owned(), String::new()]),
            std::collections::BTreeMap::from([(1u32, vec![-1i64]), (2, vec![])]),
        );
        assert_eq!(
            decode::<(
                String,
                Vec<u8>,
                u64,
                Option<Vec<String>>,
                std::collections::BTreeMap<u32, Vec<i64>>
            )>(&encode(&value).unwrap())
            .unwrap(),
            value
        );
    }

    /// A length prefix as postcard writes it.
    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out
    }

    fn decode_error<T: DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) -> String {
        match decode::<T>(bytes) {
            Err(CodecError::Decode(source)) => source.to_string(),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn a_string_longer_than_its_input_is_an_error() {
        for claimed in [1 << 40, 1 << 63, u64::MAX, 4] {
            let mut bytes = varint(claimed);
            bytes.extend_from_slice(b"abc");
            let error = decode_error::<String>(&bytes);
            assert!(
                error.contains("ends before") || error.contains("varint"),
                "{claimed}: {error}"
            );
        }
    }

    #[test]
    fn a_sequence_or_map_longer_than_its_input_is_refused_before_reading_it() {
        for claimed in [1 << 20, 1 << 40, 1 << 63, u64::MAX] {
            let mut bytes = varint(claimed);
            bytes.extend_from_slice(&[0; 10]);
            let error = decode_error::<Vec<Vec<String>>>(&bytes);
            assert_eq!(
                error,
                format!("a length of {claimed} exceeds the 10 bytes that remain")
            );
            let error = decode_error::<HashMap<String, Vec<u32>>>(&bytes);
            assert_eq!(
                error,
                format!("a length of {claimed} exceeds the 10 bytes that remain")
            );
        }
    }

    #[test]
    fn a_collection_is_told_its_checked_length() {
        /// Records the length serde is told to expect.
        struct Hint(Option<usize>);
        impl<'de> Deserialize<'de> for Hint {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Hint;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a map")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Hint, A::Error> {
                        let hint = map.size_hint();
                        while map.next_entry::<u8, u8>()?.is_some() {}
                        Ok(Hint(hint))
                    }
                }
                d.deserialize_map(V)
            }
        }
        // Two entries claimed and present: serde may reserve exactly two.
        let hint = decode::<Hint>(&[2, 1, 1, 2, 2]).unwrap();
        assert_eq!(hint.0, Some(2));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        #[derive(Serialize, Deserialize, Debug)]
        enum Expr {
            Number(i64),
            Negate(Box<Expr>),
        }
        let mut expr = Expr::Number(1);
        for _ in 0..100 {
            expr = Expr::Negate(Box::new(expr));
        }
        decode::<Expr>(&encode(&expr).unwrap()).unwrap();
        // A hundred thousand levels, on a thread with a small stack.
        let mut bytes = vec![1; 100_000];
        bytes.extend_from_slice(&[0, 2]);
        let error = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || decode_error::<Expr>(&bytes))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(error, "values nest deeper than 128 levels");
    }

    #[test]
    fn untagged_is_refused_with_its_name() {
        let mut args = ArgsWriter::new();
        args.push("ok", &1u8);
        args.push("shape", &Untagged::Number(3));
        args.push("later", &2u8);
        let (name, error) = args.finish().unwrap_err();
        assert_eq!(name, "shape");
        assert!(matches!(error, CodecError::Decode(_)), "{error:?}");
    }

    #[test]
    fn flatten_is_refused() {
        let mut args = ArgsWriter::new();
        args.push(
            "shape",
            &Flattened {
                inner: Inner { a: 1 },
                b: 2,
            },
        );
        let (name, error) = args.finish().unwrap_err();
        assert_eq!(name, "shape");
        assert!(matches!(error, CodecError::Encode(_)), "{error:?}");
    }

    #[test]
    fn more_nothings_than_bytes_are_refused_at_enqueue() {
        let mut args = ArgsWriter::new();
        args.push("few", &vec![(); 3]);
        let (name, error) = args.finish().unwrap_err();
        assert_eq!(name, "few");
        assert!(matches!(error, CodecError::Decode(_)), "{error:?}");
        // Followed by enough bytes, the same sequence decodes.
        let bytes = encode(&(vec![(); 3], "abc")).unwrap();
        assert_eq!(decode::<(Vec<()>, String)>(&bytes).unwrap().0.len(), 3);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let bytes = encode(&(1u32, 2u32)).unwrap();
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
    }
}
