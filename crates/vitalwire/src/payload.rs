//! Handshake payloads: the device's identity and the host's session parameters, carried
//! encrypted inside the Noise handshake (spec/PROTOCOL.md §4.5).
//!
//! ```text
//! payload  = format:u8 (=1) | kind:u8 | field*
//! field    = tag:u8 | len:u8 | value[len]
//! kind     = 0x01 device identity | 0x02 session parameters
//! ```
//!
//! Tags below 0x80 are critical: a receiver that does not know one rejects the payload.
//! Tags 0x80 and above are optional and skipped when unknown. A tag may appear once.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::DecodeError;

/// Encoding version of handshake payloads.
pub const PAYLOAD_FORMAT: u8 = 1;
/// Payload kind: device identity.
pub const KIND_IDENTITY: u8 = 0x01;
/// Payload kind: session parameters.
pub const KIND_PARAMS: u8 = 0x02;
/// Payload kind: pairing commitment (XX/XXpsk3 message 1).
pub const KIND_PAIRING_COMMIT: u8 = 0x03;

/// Bytes of a pairing nonce and of its commitment.
pub const PAIRING_NONCE_LEN: usize = 32;

/// Longest device id, model or firmware string, in bytes.
pub const MAX_TEXT_LEN: usize = 64;

/// Smallest frame-length limit a peer may announce.
pub const MIN_FRAME_LEN: u16 = 64;
/// Bytes a fragmented DATA frame adds around its piece: 3 header + 4 fragment header + 16 tag.
const FRAGMENTED_FRAME_OVERHEAD: u32 = 23;

/// Smallest rekey interval a host may ask for (a REKEY must fit in every key's budget).
pub const MIN_REKEY_INTERVAL: u32 = 2;

const TAG_DEVICE_ID: u8 = 0x01;
const TAG_MODEL: u8 = 0x02;
const TAG_FIRMWARE: u8 = 0x03;
const TAG_MAX_FRAME: u8 = 0x04;
const TAG_PAIRING_NONCE: u8 = 0x05;
const TAG_COMMITMENT: u8 = 0x01;

const TAG_P_MAX_FRAME: u8 = 0x01;
const TAG_P_REKEY: u8 = 0x02;
const TAG_P_MAX_MESSAGE: u8 = 0x03;

/// Who the device says it is. Sent by the initiator, encrypted, in its last handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Unique device identifier, e.g. a serial number (1 to 64 bytes of UTF-8).
    pub device_id: String,
    /// Model name (up to 64 bytes, may be empty).
    pub model: String,
    /// Firmware version (up to 64 bytes, may be empty).
    pub firmware: String,
    /// The largest stream frame (the value of the length prefix) this device accepts.
    pub max_frame_len: u16,
}

impl DeviceIdentity {
    /// An identity with the given id, empty model and firmware, and the largest frame limit.
    pub fn new(device_id: impl Into<String>) -> Self {
        DeviceIdentity {
            device_id: device_id.into(),
            model: String::new(),
            firmware: String::new(),
            max_frame_len: u16::MAX,
        }
    }

    /// Encodes (spec §4.5.1). Fails only for strings or limits outside the allowed ranges.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.encode_with_pairing_nonce(None)
    }

    /// Encodes, adding the pairing nonce of a pairing handshake (spec §12.4).
    pub fn encode_with_pairing_nonce(
        &self,
        nonce: Option<&[u8; PAIRING_NONCE_LEN]>,
    ) -> Result<Vec<u8>, DecodeError> {
        check_text(TAG_DEVICE_ID, self.device_id.as_bytes(), 1)?;
        check_text(TAG_MODEL, self.model.as_bytes(), 0)?;
        check_text(TAG_FIRMWARE, self.firmware.as_bytes(), 0)?;
        if self.max_frame_len < MIN_FRAME_LEN {
            return Err(DecodeError::InvalidField(TAG_MAX_FRAME));
        }
        let mut out = Vec::with_capacity(16 + self.device_id.len() + self.model.len() + self.firmware.len());
        out.extend_from_slice(&[PAYLOAD_FORMAT, KIND_IDENTITY]);
        put_field(&mut out, TAG_DEVICE_ID, self.device_id.as_bytes());
        if !self.model.is_empty() {
            put_field(&mut out, TAG_MODEL, self.model.as_bytes());
        }
        if !self.firmware.is_empty() {
            put_field(&mut out, TAG_FIRMWARE, self.firmware.as_bytes());
        }
        put_field(&mut out, TAG_MAX_FRAME, &self.max_frame_len.to_be_bytes());
        if let Some(nonce) = nonce {
            put_field(&mut out, TAG_PAIRING_NONCE, nonce);
        }
        Ok(out)
    }

    /// Decodes, checking every rule of spec §4.5.1. A pairing nonce is an error here: it is
    /// only valid in a pairing handshake ([`DeviceIdentity::decode_with_pairing_nonce`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match Self::decode_with_pairing_nonce(bytes)? {
            (identity, None) => Ok(identity),
            (_, Some(_)) => Err(DecodeError::UnknownCriticalField(TAG_PAIRING_NONCE)),
        }
    }

    /// Decodes an identity that may carry a pairing nonce.
    pub fn decode_with_pairing_nonce(
        bytes: &[u8],
    ) -> Result<(Self, Option<[u8; PAIRING_NONCE_LEN]>), DecodeError> {
        let mut pairing_nonce = None;
        let mut device_id = None;
        let mut model = None;
        let mut firmware = None;
        let mut max_frame = None;
        for field in Fields::new(bytes, KIND_IDENTITY)? {
            let (tag, value) = field?;
            match tag {
                TAG_DEVICE_ID => set_once(&mut device_id, tag, text(tag, value, 1)?)?,
                TAG_MODEL => set_once(&mut model, tag, text(tag, value, 0)?)?,
                TAG_FIRMWARE => set_once(&mut firmware, tag, text(tag, value, 0)?)?,
                TAG_MAX_FRAME => {
                    let v = u16::from_be_bytes(value.try_into().map_err(|_| DecodeError::InvalidField(tag))?);
                    if v < MIN_FRAME_LEN {
                        return Err(DecodeError::InvalidField(tag));
                    }
                    set_once(&mut max_frame, tag, v)?
                }
                TAG_PAIRING_NONCE => set_once(
                    &mut pairing_nonce,
                    tag,
                    <[u8; PAIRING_NONCE_LEN]>::try_from(value).map_err(|_| DecodeError::InvalidField(tag))?,
                )?,
                t if t < 0x80 => return Err(DecodeError::UnknownCriticalField(t)),
                _ => {}
            }
        }
        let identity = DeviceIdentity {
            device_id: device_id.ok_or(DecodeError::MissingField(TAG_DEVICE_ID))?,
            model: model.unwrap_or_default(),
            firmware: firmware.unwrap_or_default(),
            max_frame_len: max_frame.ok_or(DecodeError::MissingField(TAG_MAX_FRAME))?,
        };
        Ok((identity, pairing_nonce))
    }
}

/// What the host decides for the session. Sent by the responder, encrypted, in message 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// The largest stream frame (the value of the length prefix) the host accepts.
    pub max_frame_len: u16,
    /// Each side sends REKEY at the latest as the `rekey_interval`-th frame under one key.
    pub rekey_interval: u32,
    /// The largest application message either side may send fragmented over several frames
    /// (stream mode; 0: none). Bounds the receiver's reassembly memory.
    pub max_message_len: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams { max_frame_len: u16::MAX, rekey_interval: 1 << 20, max_message_len: 4 << 20 }
    }
}

impl SessionParams {
    /// The longest message 255 fragments (spec §5.4) of frames of `max_frame_len` carry:
    /// `255 × (max_frame_len − 23)`. A host announces a `max_message_len` no larger.
    pub fn max_reachable_message_len(&self) -> u32 {
        let piece = (self.max_frame_len as u32).saturating_sub(FRAGMENTED_FRAME_OVERHEAD);
        piece * crate::fragment::MAX_FRAGMENTS as u32
    }

    /// Checks the ranges of spec §4.5.2.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.max_frame_len < MIN_FRAME_LEN {
            return Err(DecodeError::InvalidField(TAG_P_MAX_FRAME));
        }
        if self.rekey_interval < MIN_REKEY_INTERVAL {
            return Err(DecodeError::InvalidField(TAG_P_REKEY));
        }
        Ok(())
    }

    /// Encodes (spec §4.5.2).
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.validate()?;
        let mut out = Vec::with_capacity(12);
        out.extend_from_slice(&[PAYLOAD_FORMAT, KIND_PARAMS]);
        put_field(&mut out, TAG_P_MAX_FRAME, &self.max_frame_len.to_be_bytes());
        put_field(&mut out, TAG_P_REKEY, &self.rekey_interval.to_be_bytes());
        put_field(&mut out, TAG_P_MAX_MESSAGE, &self.max_message_len.to_be_bytes());
        Ok(out)
    }

    /// Decodes, checking every rule of spec §4.5.2.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut max_frame = None;
        let mut rekey = None;
        let mut max_message = None;
        for field in Fields::new(bytes, KIND_PARAMS)? {
            let (tag, value) = field?;
            match tag {
                TAG_P_MAX_FRAME => set_once(
                    &mut max_frame,
                    tag,
                    u16::from_be_bytes(value.try_into().map_err(|_| DecodeError::InvalidField(tag))?),
                )?,
                TAG_P_REKEY => set_once(
                    &mut rekey,
                    tag,
                    u32::from_be_bytes(value.try_into().map_err(|_| DecodeError::InvalidField(tag))?),
                )?,
                TAG_P_MAX_MESSAGE => set_once(
                    &mut max_message,
                    tag,
                    u32::from_be_bytes(value.try_into().map_err(|_| DecodeError::InvalidField(tag))?),
                )?,
                t if t < 0x80 => return Err(DecodeError::UnknownCriticalField(t)),
                _ => {}
            }
        }
        let params = SessionParams {
            max_frame_len: max_frame.ok_or(DecodeError::MissingField(TAG_P_MAX_FRAME))?,
            rekey_interval: rekey.ok_or(DecodeError::MissingField(TAG_P_REKEY))?,
            max_message_len: max_message.unwrap_or(0),
        };
        params.validate()?;
        Ok(params)
    }
}

/// Encodes the pairing commitment payload (spec §12.4).
pub fn encode_pairing_commitment(commitment: &[u8; PAIRING_NONCE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + PAIRING_NONCE_LEN);
    out.extend_from_slice(&[PAYLOAD_FORMAT, KIND_PAIRING_COMMIT]);
    put_field(&mut out, TAG_COMMITMENT, commitment);
    out
}

/// Decodes the pairing commitment payload.
pub fn decode_pairing_commitment(bytes: &[u8]) -> Result<[u8; PAIRING_NONCE_LEN], DecodeError> {
    let mut commitment = None;
    for field in Fields::new(bytes, KIND_PAIRING_COMMIT)? {
        let (tag, value) = field?;
        match tag {
            TAG_COMMITMENT => set_once(
                &mut commitment,
                tag,
                <[u8; PAIRING_NONCE_LEN]>::try_from(value).map_err(|_| DecodeError::InvalidField(tag))?,
            )?,
            t if t < 0x80 => return Err(DecodeError::UnknownCriticalField(t)),
            _ => {}
        }
    }
    commitment.ok_or(DecodeError::MissingField(TAG_COMMITMENT))
}

fn put_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    debug_assert!(value.len() <= u8::MAX as usize);
    out.push(tag);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn set_once<T>(slot: &mut Option<T>, tag: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateField(tag));
    }
    *slot = Some(value);
    Ok(())
}

/// Whether `value` is an acceptable text field (spec §4.5.1): `min` to 64 bytes of UTF-8
/// without control characters (U+0000-U+001F, U+007F-U+009F), so that a device id can never
/// forge a line in a log or a terminal escape.
fn check_text(tag: u8, value: &[u8], min: usize) -> Result<&str, DecodeError> {
    if value.len() < min || value.len() > MAX_TEXT_LEN {
        return Err(DecodeError::InvalidField(tag));
    }
    let text = core::str::from_utf8(value).map_err(|_| DecodeError::InvalidField(tag))?;
    if text.chars().any(char::is_control) {
        return Err(DecodeError::InvalidField(tag));
    }
    Ok(text)
}

fn text(tag: u8, value: &[u8], min: usize) -> Result<String, DecodeError> {
    check_text(tag, value, min).map(String::from)
}

/// Iterates over the TLV fields after checking the two-byte prefix.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], kind: u8) -> Result<Self, DecodeError> {
        match bytes {
            [PAYLOAD_FORMAT, k, rest @ ..] if *k == kind => Ok(Fields { rest }),
            [v, k, ..] => Err(DecodeError::UnsupportedPayload { version: *v, kind: *k }),
            _ => Err(DecodeError::PayloadTruncated),
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u8, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rest {
            [] => None,
            [tag, len, rest @ ..] if rest.len() >= *len as usize => {
                let (value, rest) = rest.split_at(*len as usize);
                self.rest = rest;
                Some(Ok((*tag, value)))
            }
            _ => {
                self.rest = &[];
                Some(Err(DecodeError::PayloadTruncated))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> DeviceIdentity {
        DeviceIdentity {
            device_id: "PM-0001".into(),
            model: "VW-Monitor".into(),
            firmware: "1.2.3".into(),
            max_frame_len: 4096,
        }
    }

    #[test]
    fn identity_bytes_are_as_specified() {
        let bytes =
            DeviceIdentity { model: String::new(), firmware: String::new(), ..identity() }.encode().unwrap();
        assert_eq!(bytes, b"\x01\x01\x01\x07PM-0001\x04\x02\x10\x00");
        assert_eq!(DeviceIdentity::decode(&bytes).unwrap().device_id, "PM-0001");
    }

    #[test]
    fn identity_round_trips_and_skips_optional_unknown_fields() {
        let mut bytes = identity().encode().unwrap();
        assert_eq!(DeviceIdentity::decode(&bytes).unwrap(), identity());
        bytes.extend_from_slice(&[0x90, 2, 0xAA, 0xBB]);
        assert_eq!(DeviceIdentity::decode(&bytes).unwrap(), identity());
    }

    #[test]
    fn identity_rejects_bad_input() {
        let good = identity().encode().unwrap();
        // Every truncation is an error, never a panic.
        for cut in 0..good.len() {
            assert!(DeviceIdentity::decode(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut critical = good.clone();
        critical.extend_from_slice(&[0x10, 0]);
        assert_eq!(DeviceIdentity::decode(&critical), Err(DecodeError::UnknownCriticalField(0x10)));
        let mut dup = good.clone();
        dup.extend_from_slice(&[0x03, 1, b'x']);
        assert_eq!(DeviceIdentity::decode(&dup), Err(DecodeError::DuplicateField(0x03)));
        assert_eq!(
            DeviceIdentity::decode(b"\x01\x01\x01\x02\xff\xfe\x04\x02\x10\x00"),
            Err(DecodeError::InvalidField(0x01))
        );
        assert_eq!(
            DeviceIdentity::decode(b"\x02\x01"),
            Err(DecodeError::UnsupportedPayload { version: 2, kind: 1 })
        );
        assert_eq!(DeviceIdentity::decode(b"\x01\x01\x04\x02\x10\x00"), Err(DecodeError::MissingField(1)));
        assert!(DeviceIdentity::new("").encode().is_err());
        assert!(DeviceIdentity::new("x".repeat(65)).encode().is_err());
        // Control characters (a forged log line, a terminal escape) are refused both ways.
        for bad in ["PM\n1", "PM\u{1b}[2J", "\u{7f}", "PM\u{85}"] {
            assert_eq!(DeviceIdentity::new(bad).encode(), Err(DecodeError::InvalidField(0x01)), "{bad:?}");
            let mut bytes = vec![1, 1, 1, bad.len() as u8];
            bytes.extend_from_slice(bad.as_bytes());
            bytes.extend_from_slice(&[4, 2, 0x10, 0]);
            assert_eq!(DeviceIdentity::decode(&bytes), Err(DecodeError::InvalidField(0x01)), "{bad:?}");
        }
        let firmware = DeviceIdentity { firmware: "1.0\r".into(), ..identity() };
        assert_eq!(firmware.encode(), Err(DecodeError::InvalidField(0x03)));
        // Non-ASCII text is fine, up to 64 bytes.
        let id = "Überwachung-é".to_string();
        assert_eq!(
            DeviceIdentity::decode(&DeviceIdentity::new(id.clone()).encode().unwrap()).unwrap().device_id,
            id
        );
        assert!(DeviceIdentity::new("é".repeat(33)).encode().is_err(), "66 bytes");
    }

    #[test]
    fn pairing_fields_round_trip_and_are_refused_outside_pairing() {
        let nonce = [7u8; 32];
        let bytes = identity().encode_with_pairing_nonce(Some(&nonce)).unwrap();
        assert_eq!(DeviceIdentity::decode_with_pairing_nonce(&bytes), Ok((identity(), Some(nonce))));
        assert_eq!(DeviceIdentity::decode(&bytes), Err(DecodeError::UnknownCriticalField(0x05)));
        let c = encode_pairing_commitment(&nonce);
        assert_eq!(&c[..4], &[1, 3, 1, 32]);
        assert_eq!(decode_pairing_commitment(&c), Ok(nonce));
        assert!(decode_pairing_commitment(&c[..20]).is_err());
        assert!(decode_pairing_commitment(&identity().encode().unwrap()).is_err());
    }

    #[test]
    fn params_round_trip_and_range_checks() {
        // The example of spec §4.5.2.
        let p = SessionParams { max_frame_len: 1024, rekey_interval: 1000, max_message_len: 64 << 10 };
        let bytes = p.encode().unwrap();
        assert_eq!(bytes, b"\x01\x02\x01\x02\x04\x00\x02\x04\x00\x00\x03\xe8\x03\x04\x00\x01\x00\x00");
        assert_eq!(p.max_reachable_message_len(), 255 * 1001);
        assert_eq!(SessionParams { max_frame_len: 4096, ..p }.max_reachable_message_len(), 1_038_615);
        // Without the optional message limit: no fragmented messages.
        assert_eq!(SessionParams::decode(&bytes[..12]).unwrap().max_message_len, 0);
        assert_eq!(SessionParams::decode(&bytes), Ok(p));
        assert!(SessionParams { max_frame_len: 10, ..p }.encode().is_err());
        assert_eq!(
            SessionParams::decode(b"\x01\x02\x01\x02\x04\x00\x02\x04\x00\x00\x00\x01"),
            Err(DecodeError::InvalidField(2))
        );
        assert_eq!(
            SessionParams::decode(&identity().encode().unwrap()),
            Err(DecodeError::UnsupportedPayload { version: 1, kind: 1 })
        );
    }
}
