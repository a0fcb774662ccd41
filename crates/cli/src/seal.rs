//! Passphrase encryption of the secrets a backup carries: PBKDF2-HMAC-SHA256 stretches the
//! passphrase into an AES-256-GCM key. A wrong passphrase or a changed byte fails to open.
//!
//! Format: `LARDER-SEAL-1\n` · 16-byte salt · 12-byte nonce · ciphertext with tag.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;

const MAGIC: &[u8] = b"LARDER-SEAL-1\n";
const SALT_LEN: usize = 16;
/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const ROUNDS: u32 = 600_000;

#[derive(Debug)]
pub enum SealError {
    NotSealed,
    WrongPassphrase,
    Random,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::NotSealed => "not a file sealed by `larder backup`",
            SealError::WrongPassphrase => {
                "wrong passphrase (or the sealed file was changed): nothing was decrypted"
            }
            SealError::Random => "the system's random number generator failed",
        })
    }
}

impl std::error::Error for SealError {}

fn key(passphrase: &str, salt: &[u8]) -> LessSafeKey {
    let mut k = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(ROUNDS).expect("non-zero"),
        salt,
        passphrase.as_bytes(),
        &mut k,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte key"))
}

pub fn seal(passphrase: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| SealError::Random)?;
    rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut data = plain.to_vec();
    key(passphrase, &salt)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(MAGIC),
            &mut data,
        )
        .map_err(|_| SealError::Random)?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    Ok(out)
}

pub fn open(passphrase: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let rest = sealed.strip_prefix(MAGIC).ok_or(SealError::NotSealed)?;
    if rest.len() < SALT_LEN + NONCE_LEN {
        return Err(SealError::NotSealed);
    }
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::NotSealed)?;
    let mut data = ct.to_vec();
    let plain = key(passphrase, salt)
        .open_in_place(nonce, Aad::from(MAGIC), &mut data)
        .map_err(|_| SealError::WrongPassphrase)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = seal("correct horse", b"{\"secret\": 1}").unwrap();
        assert!(!s.windows(6).any(|w| w == b"secret"), "plaintext visible");
        assert_eq!(open("correct horse", &s).unwrap(), b"{\"secret\": 1}");
        assert!(matches!(open("wrong", &s), Err(SealError::WrongPassphrase)));
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(matches!(
            open("correct horse", &t),
            Err(SealError::WrongPassphrase)
        ));
        assert!(matches!(open("x", b"plain"), Err(SealError::NotSealed)));
    }
}
