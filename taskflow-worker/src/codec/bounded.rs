//! Decoding whose cost follows the bytes present, whatever they claim.
//!
//! postcard reads every scalar (varints, bytes, strings, tags); this module
//! reads the structure around them (options, sequences, maps, tuples,
//! structs, enums) so it can check each claim before serde acts on it:
//!
//! - A sequence or map may not claim more elements than bytes remain after
//!   its length. Only elements that encode to nothing (`()`, unit structs)
//!   let a valid encoding do so; a hostile length is refused before any
//!   element is read, so a collection never grows without consuming input
//!   and decoding takes time linear in it.
//! - The length serde is told (its `size_hint`, which `Vec`, `HashMap` and
//!   the like preallocate from) is that checked length, so no sequence
//!   reserves more slots than there are bytes left; a map, whose entries are
//!   a key and a value, is told at most one entry per two bytes left (a
//!   guess too low costs a map one regrowth, never a wrong result). postcard
//!   alone reports a map's claimed length unchecked, so a 10-byte input
//!   could make a `HashMap` reserve a megabyte.
//! - Values nest at most [`MAX_DEPTH`] levels, so a recursive type (a tree,
//!   an expression) cannot overflow the stack on deeply nested input.
//!
//! postcard's own scalar readers already check a string's or byte string's
//! length against the input before taking it. The input is one cursor,
//! shared by the postcard flavor that reads it and the checks here that
//! measure what remains.

use std::cell::Cell;
use std::fmt;

use postcard::de_flavors::Flavor;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// How deeply values may nest: every option, sequence, map, tuple, struct,
/// newtype and enum is one level. Deeper than any data the runtime itself
/// sends (a worker frame nests at most six), and far below what overflows a
/// 2 MiB thread stack (a small recursive enum does near 4,000 levels in a
/// debug build). serde_json settles on the same number.
pub(super) const MAX_DEPTH: usize = 128;

/// Why bytes did not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// postcard refused a scalar, or the input ended early.
    #[error("{}", describe(.0))]
    Format(postcard::Error),
    /// A sequence or map claims more elements than there are bytes left.
    #[error("a length of {len} exceeds the {remaining} bytes that remain")]
    LengthExceedsInput {
        /// The claimed number of elements.
        len: u64,
        /// The bytes left after the length.
        remaining: usize,
    },
    /// Values nest deeper than [`MAX_DEPTH`].
    #[error("values nest deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The type refused what it was given (an unknown variant, a wrong length).
    #[error("{0}")]
    Custom(String),
}

impl From<postcard::Error> for Error {
    fn from(error: postcard::Error) -> Self {
        Error::Format(error)
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Custom(msg.to_string())
    }
}

/// postcard's messages, in this crate's words.
fn describe(error: &postcard::Error) -> &'static str {
    use postcard::Error as E;
    match error {
        E::DeserializeUnexpectedEnd => "the input ends before the value does",
        E::DeserializeBadVarint => "a varint is longer than its integer type allows",
        E::DeserializeBadBool => "a bool is neither 0 nor 1",
        E::DeserializeBadChar => "a char is not one unicode scalar value",
        E::DeserializeBadUtf8 => "a string is not valid utf-8",
        E::DeserializeBadOption => "an option tag is neither 0 nor 1",
        E::DeserializeBadEnum => "an enum variant index exceeds u32",
        E::WontImplement => {
            "the type needs a self-describing format (`untagged`, `flatten`, `deserialize_any`)"
        }
        E::SerdeDeCustom => "the type refused a value",
        _ => "the input is not a valid encoding",
    }
}

/// Decodes a `T` from the front of `bytes`, returning it and the bytes used.
pub(super) fn take_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), Error> {
    let rest = Cell::new(bytes);
    let mut inner = postcard::Deserializer::from_flavor(Input { rest: &rest });
    let value = T::deserialize(Bounded {
        inner: &mut inner,
        rest: &rest,
        depth: 0,
    })?;
    Ok((value, bytes.len() - rest.get().len()))
}

/// The postcard flavor over the shared cursor: the bytes not yet read.
struct Input<'de> {
    rest: &'de Cell<&'de [u8]>,
}

impl<'de> Flavor<'de> for Input<'de> {
    type Remainder = ();
    type Source = ();

    fn pop(&mut self) -> postcard::Result<u8> {
        let (&first, rest) = self
            .rest
            .get()
            .split_first()
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.rest.set(rest);
        Ok(first)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.rest.get().len())
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        let (taken, rest) = self
            .rest
            .get()
            .split_at_checked(ct)
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.rest.set(rest);
        Ok(taken)
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// postcard's deserializer for scalars, checked structure around them.
struct Bounded<'a, 'de> {
    inner: &'a mut postcard::Deserializer<'de, Input<'de>>,
    rest: &'de Cell<&'de [u8]>,
    /// How many levels enclose the value this reads.
    depth: usize,
}

impl<'de> Bounded<'_, 'de> {
    fn remaining(&self) -> usize {
        self.rest.get().len()
    }

    /// A reader for the same level (the next element of a sequence).
    fn reborrow(&mut self) -> Bounded<'_, 'de> {
        Bounded {
            inner: &mut *self.inner,
            rest: self.rest,
            depth: self.depth,
        }
    }

    /// A reader for the values inside this one, one level down.
    fn nested(&mut self) -> Result<Bounded<'_, 'de>, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::TooDeep { limit: MAX_DEPTH });
        }
        Ok(Bounded {
            inner: &mut *self.inner,
            rest: self.rest,
            depth: self.depth + 1,
        })
    }

    /// A sequence's or map's length, refused if more than the bytes left.
    fn length(&mut self) -> Result<usize, Error> {
        // postcard writes a usize as a u64 varint on every platform it runs on.
        let len = u64::deserialize(&mut *self.inner)?;
        let remaining = self.remaining();
        match usize::try_from(len) {
            Ok(fits) if fits <= remaining => Ok(fits),
            _ => Err(Error::LengthExceedsInput { len, remaining }),
        }
    }
}

/// Scalars go to postcard as they are: none of them hands the visitor a
/// deserializer to read nested values with.
macro_rules! forward_to_postcard {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                Ok(de::Deserializer::$method(self.inner, visitor)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Bounded<'_, 'de> {
    type Error = Error;

    forward_to_postcard! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_unit deserialize_identifier deserialize_ignored_any
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        Ok(de::Deserializer::deserialize_unit_struct(
            self.inner, name, visitor,
        )?)
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        match u8::deserialize(&mut *self.inner)? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self.nested()?),
            _ => Err(Error::Format(postcard::Error::DeserializeBadOption)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self.nested()?)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let len = self.length()?;
        visitor.visit_seq(Elements {
            de: self.nested()?,
            len,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        // The length is the type's, not the input's: nothing to check.
        visitor.visit_seq(Elements {
            de: self.nested()?,
            len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let len = self.length()?;
        visitor.visit_map(Elements {
            de: self.nested()?,
            len,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self.nested()?)
    }
}

/// The elements of a sequence, tuple or map (a map's are key, value, key…).
struct Elements<'a, 'de> {
    de: Bounded<'a, 'de>,
    /// Elements (or entries) not yet read.
    len: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(self.de.reborrow()).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.remaining()))
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(self.de.reborrow()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.de.reborrow())
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.remaining() / 2))
    }
}

impl<'a, 'de> de::EnumAccess<'de> for Bounded<'a, 'de> {
    type Error = Error;
    type Variant = Bounded<'a, 'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = u32::deserialize(&mut *self.inner)?;
        let variant = seed.deserialize(IntoDeserializer::<'de, Error>::into_deserializer(index))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Bounded<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}
