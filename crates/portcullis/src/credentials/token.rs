//! The managed token format: `pcl_` + 43 base62 characters of randomness + a 6-character
//! base62 CRC32 of them.
//!
//! The fixed prefix lets secret scanners recognise a leaked token; the checksum lets the
//! gateway refuse a mistyped or made-up token without a store lookup. Only a keyed hash of
//! the whole token and its short public prefix are ever stored.

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::base::hex;

/// What every managed token starts with.
pub const PREFIX: &str = "pcl_";
const RANDOM_BYTES: usize = 32;
/// Base62 characters that hold the 32 random bytes.
const RANDOM_CHARS: usize = 43;
/// Base62 characters that hold the CRC32.
const CHECKSUM_CHARS: usize = 6;
/// Length of every managed token.
pub const TOKEN_LEN: usize = PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;
/// Characters of a token that may be shown and stored: `pcl_` and the first 8 random ones.
pub const PUBLIC_PREFIX_LEN: usize = PREFIX.len() + 8;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A newly minted token: the secret, shown once, and what may be stored about it.
pub struct MintedToken {
    /// The token itself.
    pub secret: SecretString,
    /// Its public prefix, e.g. `pcl_3xY9QaBc`.
    pub public_prefix: String,
}

/// Mints a new random token.
pub fn mint() -> MintedToken {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let random = base62(&bytes, RANDOM_CHARS);
    let checksum = base62(
        &crc32fast::hash(random.as_bytes()).to_be_bytes(),
        CHECKSUM_CHARS,
    );
    let token = format!("{PREFIX}{random}{checksum}");
    MintedToken {
        public_prefix: token[..PUBLIC_PREFIX_LEN].to_owned(),
        secret: SecretString::from(token),
    }
}

/// Whether `token` has the managed format: prefix, length, alphabet and checksum. This
/// says nothing about whether the token exists.
pub fn is_well_formed(token: &str) -> bool {
    let Some(rest) = token.strip_prefix(PREFIX) else {
        return false;
    };
    if rest.len() != RANDOM_CHARS + CHECKSUM_CHARS
        || !rest.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return false;
    }
    let (random, checksum) = rest.split_at(RANDOM_CHARS);
    base62(
        &crc32fast::hash(random.as_bytes()).to_be_bytes(),
        CHECKSUM_CHARS,
    ) == checksum
}

/// Big-endian `bytes` in base62, left-padded with `0` to `width` characters.
fn base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while number.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    digits.resize(width.max(digits.len()), b'0');
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A random identifier such as `tok_4fQ9zX1bK2mN` (not secret).
pub fn new_id(kind: &str) -> String {
    let mut bytes = [0u8; 9];
    rand::rng().fill_bytes(&mut bytes);
    format!("{kind}_{}", base62(&bytes, 13))
}

/// The keyed hash that identifies a token in the store: HMAC-SHA256 under the server's
/// pepper, in hex. Without the pepper, a copy of the store cannot be used to test guesses.
#[derive(Clone)]
pub struct TokenHasher {
    key: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(..)")
    }
}

impl TokenHasher {
    /// Hashes under `pepper`.
    pub fn new(pepper: &SecretString) -> Self {
        // HMAC accepts keys of any length.
        let key = Hmac::<Sha256>::new_from_slice(pepper.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { key }
    }

    /// The keyed digest of `token`.
    pub fn digest(&self, token: &str) -> [u8; 32] {
        let mut mac = self.key.clone();
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The stored form of `token`: its digest in lowercase hex.
    pub fn hash(&self, token: &str) -> String {
        hex::encode(&self.digest(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minted_tokens_are_well_formed_and_distinct() {
        let a = mint();
        let b = mint();
        let a_text = a.secret.expose_secret();
        assert_eq!(a_text.len(), TOKEN_LEN);
        assert!(is_well_formed(a_text));
        assert_ne!(a_text, b.secret.expose_secret());
        assert!(a_text.starts_with(&a.public_prefix));
        assert_eq!(a.public_prefix.len(), PUBLIC_PREFIX_LEN);
    }

    #[test]
    fn damaged_tokens_are_refused_without_a_lookup() {
        let token = mint().secret.expose_secret().to_owned();
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            flipped.as_str(),
            &token[..token.len() - 1],
            &format!("{token}0"),
            &token.replacen("pcl_", "pcx_", 1),
            &token.replacen("pcl_", "", 1),
            &format!("{}é", &token[..token.len() - 2]),
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn base62_is_fixed_width() {
        assert_eq!(base62(&[0, 0], 4), "0000");
        assert_eq!(base62(&[0, 61], 2), "0z");
        assert_eq!(base62(&[0, 62], 2), "10");
        assert_eq!(
            base62(&[0xff; 32], 43).len(),
            43,
            "32 bytes always fit in 43 characters"
        );
    }

    #[test]
    fn hashes_depend_on_the_pepper_and_hide_the_token() {
        let token = "pcl_example";
        let one = TokenHasher::new(&SecretString::from("pepper-one")).hash(token);
        let two = TokenHasher::new(&SecretString::from("pepper-two")).hash(token);
        assert_ne!(one, two);
        assert_eq!(one.len(), 64);
        assert!(!one.contains("example"));
        assert_eq!(
            format!("{:?}", TokenHasher::new(&SecretString::from("p"))),
            "TokenHasher(..)"
        );
    }

    proptest! {
        #[test]
        fn any_single_character_change_is_caught(position in 4usize..TOKEN_LEN, replacement in "[0-9A-Za-z]") {
            let token = mint().secret.expose_secret().to_owned();
            let mut bytes = token.clone().into_bytes();
            prop_assume!(bytes[position] != replacement.as_bytes()[0]);
            bytes[position] = replacement.as_bytes()[0];
            prop_assert!(!is_well_formed(&String::from_utf8(bytes).unwrap()));
        }
    }
}
