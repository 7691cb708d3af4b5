//! The payload encryption of MinIO's admin API (madmin's `EncryptData` / `DecryptData` format),
//! written from the format's description. Pure functions: no I/O, no logging of keys or data.
//!
//! Layout: `salt[32] | cipher id[1] | nonce[8] | stream`. The key is derived from the password
//! (the admin's secret key) and the salt: id 0 = Argon2id + AES-256-GCM, id 1 = Argon2id +
//! ChaCha20-Poly1305, id 2 = PBKDF2-SHA256 + AES-256-GCM. The stream cuts the plaintext into
//! 16 KiB fragments and always ends with exactly one final fragment of 0 to 16 KiB; fragment `i`
//! (from 1) is sealed with the nonce `nonce || LE32(i)` and the associated data `flag || T0`, where
//! flag is 0x80 on the final fragment and 0x00 before it, and `T0` is the tag of sealing nothing
//! under the nonce `nonce || LE32(0)` and the caller's associated data (empty for madmin).

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use rand::RngCore;

use crate::Error;

const SALT_LEN: usize = 32;
const NONCE_PREFIX_LEN: usize = 8;
const HEADER_LEN: usize = SALT_LEN + 1 + NONCE_PREFIX_LEN;
/// Plaintext bytes per fragment (sio's default buffer size).
const FRAGMENT_LEN: usize = 16 * 1024;
const TAG_LEN: usize = 16;
const FINAL_FLAG: u8 = 0x80;

const ARGON2_TIME: u32 = 1;
/// Serialises Argon2id derivations (see `Cipher::derive_key`).
static ARGON2_MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());
const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
const ARGON2_LANES: u32 = 4;
const PBKDF2_ROUNDS: u32 = 8192;

/// The key derivation and AEAD of a payload, as its id byte says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Argon2idAesGcm = 0,
    Argon2idChaCha20Poly1305 = 1,
    Pbkdf2AesGcm = 2,
}

impl Cipher {
    fn from_id(id: u8) -> Result<Self, Error> {
        match id {
            0 => Ok(Self::Argon2idAesGcm),
            1 => Ok(Self::Argon2idChaCha20Poly1305),
            2 => Ok(Self::Pbkdf2AesGcm),
            other => Err(Error::UnknownCipher(other)),
        }
    }

    fn derive_key(self, password: &str, salt: &[u8]) -> [u8; 32] {
        let mut key = [0u8; 32];
        match self {
            Self::Argon2idAesGcm | Self::Argon2idChaCha20Poly1305 => {
                // Each derivation fills 64 MiB: one at a time per process, so that concurrent
                // admin calls (reconciles of several policies) cannot add up to an OOM kill.
                let _one_at_a_time = ARGON2_MEMORY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_TIME, ARGON2_LANES, Some(key.len()))
                    .expect("madmin's Argon2id parameters are valid");
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                    .hash_password_into(password.as_bytes(), salt, &mut key)
                    .expect("a 32-byte salt and a 32-byte output are within Argon2's limits");
            }
            Self::Pbkdf2AesGcm => {
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt, PBKDF2_ROUNDS, &mut key)
            }
        }
        key
    }
}

/// Encrypts `plaintext` for the admin API the way madmin does on hosts with AES hardware
/// (Argon2id + AES-256-GCM); the server decrypts every cipher id.
pub fn encrypt_data(password: &str, plaintext: &[u8]) -> Vec<u8> {
    encrypt_with(Cipher::Argon2idAesGcm, password, plaintext)
}

/// [`encrypt_data`] on a blocking thread. The Argon2id derivation fills 64 MiB and takes a
/// while (longer when other derivations hold the one-at-a-time lock): on the async runtime's
/// threads it would stall every other task for as long, the operator's lease renewals included.
pub async fn encrypt_off_runtime(password: &str, plaintext: &[u8]) -> Vec<u8> {
    let (password, plaintext) = (password.to_owned(), plaintext.to_vec());
    tokio::task::spawn_blocking(move || encrypt_data(&password, &plaintext)).await.expect("encryption does not panic")
}

/// [`decrypt_data`] on a blocking thread, for the same reason as [`encrypt_off_runtime`].
pub async fn decrypt_off_runtime(password: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    let (password, data) = (password.to_owned(), data.to_vec());
    tokio::task::spawn_blocking(move || decrypt_data(&password, &data)).await.expect("decryption does not panic")
}

/// Encrypts with a chosen cipher id (all three are accepted by MinIO's decryption).
pub fn encrypt_with(cipher: Cipher, password: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_PREFIX_LEN];
    rand::rng().fill_bytes(&mut salt);
    rand::rng().fill_bytes(&mut nonce);
    let key = cipher.derive_key(password, &salt);

    let fragments = plaintext.len().div_ceil(FRAGMENT_LEN).max(1);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + fragments * TAG_LEN);
    out.extend_from_slice(&salt);
    out.push(cipher as u8);
    out.extend_from_slice(&nonce);
    match cipher {
        Cipher::Argon2idAesGcm | Cipher::Pbkdf2AesGcm => {
            seal_stream(&Aes256Gcm::new(&key.into()), &nonce, b"", FRAGMENT_LEN, plaintext, &mut out)
        }
        Cipher::Argon2idChaCha20Poly1305 => {
            seal_stream(&ChaCha20Poly1305::new(&key.into()), &nonce, b"", FRAGMENT_LEN, plaintext, &mut out)
        }
    }
    out
}

/// Decrypts a payload of MinIO's admin API. Fails when the password is not the one it was
/// encrypted with, or when the data was cut short or changed.
pub fn decrypt_data(password: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    if data.len() < HEADER_LEN {
        return Err(Error::Decrypt("the payload is shorter than the 41-byte header"));
    }
    let (salt, rest) = data.split_at(SALT_LEN);
    let cipher = Cipher::from_id(rest[0])?;
    let (nonce, stream) = rest[1..].split_at(NONCE_PREFIX_LEN);
    let key = cipher.derive_key(password, salt);
    match cipher {
        Cipher::Argon2idAesGcm | Cipher::Pbkdf2AesGcm => {
            open_stream(&Aes256Gcm::new(&key.into()), nonce, b"", FRAGMENT_LEN, stream)
        }
        Cipher::Argon2idChaCha20Poly1305 => {
            open_stream(&ChaCha20Poly1305::new(&key.into()), nonce, b"", FRAGMENT_LEN, stream)
        }
    }
}

/// The AEAD nonce of fragment `sequence`: the stream's nonce prefix, then the sequence number
/// as four little-endian bytes.
fn fragment_nonce<A: AeadCore>(prefix: &[u8], sequence: u32) -> GenericArray<u8, A::NonceSize> {
    let mut nonce = GenericArray::<u8, A::NonceSize>::default();
    let split = nonce.len() - 4;
    nonce[..split].copy_from_slice(prefix);
    nonce[split..].copy_from_slice(&sequence.to_le_bytes());
    nonce
}

/// The associated data of every fragment but its first flag byte: `0x00 || T0`.
fn fragment_aad<A: Aead>(aead: &A, prefix: &[u8], stream_aad: &[u8]) -> Vec<u8> {
    let nonce = fragment_nonce::<A>(prefix, 0);
    let tag = aead
        .encrypt(&nonce, Payload { msg: b"", aad: stream_aad })
        .expect("sealing an empty message cannot exceed the AEAD's limits");
    let mut aad = Vec::with_capacity(1 + tag.len());
    aad.push(0x00);
    aad.extend_from_slice(&tag);
    aad
}

fn seal_stream<A: Aead>(
    aead: &A,
    prefix: &[u8],
    stream_aad: &[u8],
    fragment_len: usize,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let mut aad = fragment_aad(aead, prefix, stream_aad);
    let count = plaintext.len().div_ceil(fragment_len).max(1);
    let mut fragments = plaintext.chunks(fragment_len);
    for index in 0..count {
        let fragment = fragments.next().unwrap_or_default();
        if index + 1 == count {
            aad[0] = FINAL_FLAG;
        }
        let sequence = u32::try_from(index + 1).expect("admin payloads stay far below 2^32 fragments");
        let sealed = aead
            .encrypt(&fragment_nonce::<A>(prefix, sequence), Payload { msg: fragment, aad: &aad })
            .expect("a 16 KiB fragment is within the AEAD's limits");
        out.extend_from_slice(&sealed);
    }
}

fn open_stream<A: Aead>(
    aead: &A,
    prefix: &[u8],
    stream_aad: &[u8],
    fragment_len: usize,
    mut stream: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut aad = fragment_aad(aead, prefix, stream_aad);
    let sealed_len = fragment_len + TAG_LEN;
    let mut plaintext = Vec::with_capacity(stream.len());
    let mut sequence: u32 = 1;
    loop {
        // A full fragment followed by more data is not the last one; whatever remains at the
        // end (a tag alone up to a full fragment) is the final fragment.
        let is_final = stream.len() <= sealed_len;
        let (sealed, rest) = if is_final { (stream, &stream[stream.len()..]) } else { stream.split_at(sealed_len) };
        if sealed.len() < TAG_LEN {
            return Err(Error::Decrypt("the payload was cut short"));
        }
        if is_final {
            aad[0] = FINAL_FLAG;
        }
        let opened =
            aead.decrypt(&fragment_nonce::<A>(prefix, sequence), Payload { msg: sealed, aad: &aad }).map_err(|_| {
                Error::Decrypt("authentication failed: the secret key does not match or the data was changed")
            })?;
        plaintext.extend_from_slice(&opened);
        if is_final {
            return Ok(plaintext);
        }
        stream = rest;
        sequence = sequence.checked_add(1).ok_or(Error::Decrypt("the payload has too many fragments"))?;
    }
}

#[cfg(test)]
mod tests {

    /// On a single-threaded runtime, a derivation on the runtime's thread would stop every other
    /// task until it is done; off the runtime, a ticker keeps ticking meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn the_key_derivation_leaves_the_async_runtime_free() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        let mut sealed = Vec::new();
        for _ in 0..3 {
            sealed = encrypt_off_runtime("minio-secret", b"notify_amqp:X url=\"amqp://h\"").await;
        }
        let elapsed = started.elapsed();
        let ticked = ticks.load(Ordering::SeqCst);
        ticker.abort();
        assert!(ticked >= 3, "the runtime ticked {ticked} times during {elapsed:?} of key derivation");
        assert_eq!(decrypt_off_runtime("minio-secret", &sealed).await.unwrap(), b"notify_amqp:X url=\"amqp://h\"");
    }

    use aes_gcm::Aes128Gcm;
    use chacha20poly1305::XChaCha20Poly1305;

    use super::*;

    /// The stream layer with a fixed key, so that the many sizes below do not each pay for
    /// an Argon2id derivation (64 MiB, slow in debug builds).
    fn stream_round_trip(plaintext: &[u8]) -> Vec<u8> {
        let aead = Aes256Gcm::new(&[7u8; 32].into());
        let prefix = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut sealed = Vec::new();
        seal_stream(&aead, &prefix, b"", FRAGMENT_LEN, plaintext, &mut sealed);
        let fragments = plaintext.len().div_ceil(FRAGMENT_LEN).max(1);
        assert_eq!(sealed.len(), plaintext.len() + fragments * TAG_LEN, "one tag per fragment");
        let opened = open_stream(&aead, &prefix, b"", FRAGMENT_LEN, &sealed).expect("open what was sealed");
        assert_eq!(opened, plaintext);
        sealed
    }

    #[test]
    fn streams_round_trip_at_every_fragment_boundary() {
        for len in [0, 1, FRAGMENT_LEN - 1, FRAGMENT_LEN, FRAGMENT_LEN + 1, 2 * FRAGMENT_LEN, 100 * 1024] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            stream_round_trip(&plaintext);
        }
    }

    #[test]
    fn exactly_one_fragment_of_plaintext_is_a_single_final_fragment() {
        let sealed = stream_round_trip(&[9u8; FRAGMENT_LEN]);
        assert_eq!(sealed.len(), FRAGMENT_LEN + TAG_LEN);
    }

    #[test]
    fn a_stream_cut_at_a_fragment_boundary_does_not_open() {
        let aead = Aes256Gcm::new(&[7u8; 32].into());
        let prefix = [0u8; 8];
        let mut sealed = Vec::new();
        seal_stream(&aead, &prefix, b"", FRAGMENT_LEN, &[1u8; FRAGMENT_LEN + 10], &mut sealed);
        // The first fragment alone would be a full final fragment; its flag says otherwise.
        let first_only = &sealed[..FRAGMENT_LEN + TAG_LEN];
        assert!(matches!(open_stream(&aead, &prefix, b"", FRAGMENT_LEN, first_only), Err(Error::Decrypt(_))));
    }

    #[test]
    fn payloads_round_trip_through_every_cipher() {
        for (cipher, plaintext) in [
            (Cipher::Argon2idAesGcm, &b""[..]),
            (Cipher::Argon2idAesGcm, &b"x"[..]),
            (Cipher::Argon2idChaCha20Poly1305, &[3u8; FRAGMENT_LEN + 1][..]),
            (Cipher::Pbkdf2AesGcm, &[4u8; 100 * 1024][..]),
        ] {
            let sealed = encrypt_with(cipher, "minio-secret", plaintext);
            assert_eq!(sealed[SALT_LEN], cipher as u8);
            assert_eq!(decrypt_data("minio-secret", &sealed).expect("decrypt"), plaintext);
        }
        let sealed = encrypt_data("minio-secret", b"notify_amqp:X url=\"amqp://h\"");
        assert_eq!(sealed[SALT_LEN], Cipher::Argon2idAesGcm as u8);
        assert_eq!(decrypt_data("minio-secret", &sealed).unwrap(), b"notify_amqp:X url=\"amqp://h\"");
    }

    #[test]
    fn tampering_or_a_wrong_password_fails() {
        let sealed = encrypt_with(Cipher::Pbkdf2AesGcm, "right", b"notify_amqp:X enable=on");
        assert!(matches!(decrypt_data("wrong", &sealed), Err(Error::Decrypt(_))));
        for position in [0, SALT_LEN + 1, HEADER_LEN, sealed.len() - 1] {
            let mut changed = sealed.clone();
            changed[position] ^= 0x01;
            assert!(decrypt_data("right", &changed).is_err(), "a flipped bit at {position} went unnoticed");
        }
        assert!(decrypt_data("right", &sealed[..sealed.len() - 1]).is_err());
        assert!(decrypt_data("right", &sealed[..HEADER_LEN + TAG_LEN - 1]).is_err());
        assert!(matches!(decrypt_data("right", &sealed[..HEADER_LEN - 1]), Err(Error::Decrypt(_))));
        let mut unknown = sealed.clone();
        unknown[SALT_LEN] = 7;
        assert!(matches!(decrypt_data("right", &unknown), Err(Error::UnknownCipher(7))));
    }

    /// Ciphertexts that madmin-go v3.0.109 (`encrypt_test.go`, `decryptDataTests`) decrypts;
    /// kept as hex data. The test only says they decrypt; their lengths match the zero-filled
    /// plaintexts of the neighbouring `encryptDataTests`, and so do their contents.
    #[test]
    fn madmin_test_vectors_decrypt() {
        let vectors: [(&str, &str, usize); 4] = [
            (
                "",
                "828aa81599df0651c0461adb82283e8b89956baee9f6e719947ef9cddc849028001dc9d3ac0938f66b07bacc9751437e1985f8a9763c240e81",
                0,
            ),
            (
                "",
                concat!(
                    "1793c71df6647860437134073c15688cbb15961dc0758c7ee1225e66e79c724c00d790dba9c671eae89da2c736d858286ac9bd027abacc6443",
                    "0375cd41b63b67c070c7fba475a8dd66ae65ba905176c48cbe6f734fc74df87343d8ccff54bada4aeb0a04bd021633ebe6c4768e23f5dea142",
                    "561d4fe3f90ed59d13dc5fb3a585dadec1742325291b9c81692bdd3420b2428127f8195e0ecd9a1c9237712ed67af7339fbbf7ff3ee1c516e1",
                    "f81e69d933e057b30997e7274a2c9698e07c39f0e8d6818858f34c8191871b5a52bea9061806bd029024bfc1d9c1f230904968d6c9e10fddcb",
                    "c006ba97356ff243570fd96df07dd6894e215a6b24c4ed730369519289ebd877aff6ccbd2265985e4ab1a2b7930bab9cfb767b97348a639ddf",
                    "8db81bf5151da7e8f3d9638a1b86eb1dd78cc6a526f10a414c78638f"
                ),
                256,
            ),
            (
                "xPl.8/rhR\"Q_1xLt",
                concat!(
                    "b5c016e93b84b473fc8a37af94936563630c36d6df1841d23a86ee51ca161f9e00ac19116b32f643ff6a56a212b265d8c56",
                    "195bb0d12ce199e13dfdc5272f80c1564da2c6fc2fa18da91d8062de02af5cdafea491c6f3cae1f"
                ),
                32,
            ),
            (
                "7h5oU4$te{;K}fgqlI^]",
                concat!(
                    "c58edf7cfd557b6b655de6f48b1a3049d8d049dadb3a7bfa9ac9ccbb5baf37ec00f83086a26f43b7d6bc9075ad0",
                    "38bf5741f118d502ebe94165e4072ba7f98535d6b1e3b6ae67a98115d146d9b4d90e4df4ae82df9cfa17ed7cd42",
                    "465181559f7ddf09c98beec521bb4478e0cb73c4e0827af8688ff4e7a07327a10d5a180035e6ddb16d974a85257",
                    "981cd9e0360a20f7b4d653190267dfb241148f018ae180568042e864b9e1b5bc05425a3abc2b0324f50c72d5679",
                    "8f924405dfc0f8523f4bb564ed65af8e1b1c82a7a0640552ecf81985d95d0993d99172592ddc1393dfa63e8f0b3",
                    "d744b2cc4b73384ca4693f0c1aec0e9b00e85f2937e891105d67da8f59c14ca96608e0425c42f9c1e7c2a8b3413",
                    "e1381784f9cfe01de7c47cea1f8d7a7d88f5d4aca783cf55332b47f957a6b9a65269d7eb606b877b"
                ),
                256,
            ),
        ];
        for (password, data, expected_len) in vectors {
            let data = hex::decode(data).unwrap();
            let plaintext = decrypt_data(password, &data).unwrap_or_else(|e| panic!("vector failed: {e}"));
            assert_eq!(plaintext, vec![0u8; expected_len]);
        }
        let data = hex::decode(vectors[2].1).unwrap();
        assert!(decrypt_data("not the password", &data).is_err());
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct SioVector {
        algorithm: String,
        buf_size: usize,
        key: String,
        nonce: String,
        associated_data: String,
        plaintext: String,
        ciphertext: String,
    }

    /// secure-io/sio-go v0.3.1 `test_vectors.json` (MIT): small fragment sizes and non-empty
    /// associated data exercise the fragment boundaries and `T0`.
    #[test]
    fn sio_stream_test_vectors_seal_and_open() {
        let vectors: Vec<SioVector> =
            serde_json::from_str(include_str!("../testdata/sio-go-test-vectors.json")).unwrap();
        assert_eq!(vectors.len(), 28);
        for (index, vector) in vectors.iter().enumerate() {
            let key = hex::decode(&vector.key).unwrap();
            let nonce = hex::decode(&vector.nonce).unwrap();
            let aad = hex::decode(&vector.associated_data).unwrap();
            let plaintext = hex::decode(&vector.plaintext).unwrap();
            let ciphertext = hex::decode(&vector.ciphertext).unwrap();
            let mut sealed = Vec::new();
            let opened = match vector.algorithm.as_str() {
                "AES-128-GCM" => {
                    let aead = Aes128Gcm::new_from_slice(&key).unwrap();
                    seal_stream(&aead, &nonce, &aad, vector.buf_size, &plaintext, &mut sealed);
                    open_stream(&aead, &nonce, &aad, vector.buf_size, &ciphertext)
                }
                "XChaCha20-Poly1305" => {
                    let aead = XChaCha20Poly1305::new_from_slice(&key).unwrap();
                    seal_stream(&aead, &nonce, &aad, vector.buf_size, &plaintext, &mut sealed);
                    open_stream(&aead, &nonce, &aad, vector.buf_size, &ciphertext)
                }
                other => panic!("unexpected algorithm {other}"),
            };
            assert_eq!(hex::encode(&sealed), vector.ciphertext, "vector {index} seals differently");
            assert_eq!(opened.unwrap(), plaintext, "vector {index} opens differently");
        }
    }
}
