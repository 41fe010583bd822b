//! Hex, the one text form of the ids and digests Levee writes (request ids, W3C trace
//! context, API key digests) and reads (`traceparent`, `sha256:` digests in the config).
//! Kept in one place, below every other module, so that none of them writes its own.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` to `out` as lowercase hex.
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
        out.push(DIGITS.get(usize::from(b & 0x0f)).copied().unwrap_or(b'0'));
    }
}

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    out.into_iter().map(char::from).collect()
}

/// Whether `text` is lowercase hex digits only (W3C trace context allows no other).
pub fn is_lower(text: &[u8]) -> bool {
    text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Fills `out` from exactly `2 * out.len()` hex digits of either case; `None` otherwise.
pub fn decode_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (&high, &low) = (pair.first()?, pair.get(1)?);
        *byte = digit(high)? << 4 | digit(low)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x4b, 0xf9, 0xff];
        assert_eq!(encode(&bytes), "004bf9ff");
        let mut out = [0u8; 4];
        assert_eq!(decode_into(b"004bf9ff", &mut out), Some(()));
        assert_eq!(out, bytes);
        assert_eq!(decode_into(b"004BF9FF", &mut out), Some(()), "either case");
        assert_eq!(decode_into(b"004bf9f", &mut out), None, "odd length");
        assert_eq!(decode_into(b"004bf9fg", &mut out), None);
        assert!(is_lower(b"09af") && !is_lower(b"09AF"));
    }
}
