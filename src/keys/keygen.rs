//! `regnotify keygen`: two fresh RSA-2048 pairs (the MPP's and a stand-in Alipay+ pair) written
//! into a directory, private keys created with mode 0600 from the start.
//!
//! It never overwrites an existing file and never prints key material.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::KeyError;
use super::parse::PrivateSigningKey;

/// File names written by [`keygen`].
pub(crate) const MPP_PRIVATE_KEY_FILE: &str = "mpp_private_key.pem";
pub(crate) const MPP_PUBLIC_KEY_FILE: &str = "mpp_public_key.pem";
pub(crate) const ALIPAYPLUS_PRIVATE_KEY_FILE: &str = "alipayplus_private_key.pem";
pub(crate) const ALIPAYPLUS_PUBLIC_KEY_FILE: &str = "alipayplus_public_key.pem";

/// The files [`keygen`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeygenFiles {
    pub mpp_private_key: PathBuf,
    pub mpp_public_key: PathBuf,
    pub alipayplus_private_key: PathBuf,
    pub alipayplus_public_key: PathBuf,
}

/// Generates two RSA-2048 pairs into `out_dir` (created if missing): the MPP's (signs requests;
/// its public half is what the Alipay+ portal, or the simulator, is given) and a stand-in
/// Alipay+ pair (the simulator signs responses with it; regnotify verifies with its public half).
///
/// Private keys are PKCS#8 PEM created with mode 0600 from the start; existing files are never
/// overwritten.
pub fn keygen(out_dir: &Path) -> Result<KeygenFiles, KeyError> {
    std::fs::create_dir_all(out_dir).map_err(|error| KeyError::Write {
        path: out_dir.to_owned(),
        error,
    })?;
    let files = KeygenFiles {
        mpp_private_key: out_dir.join(MPP_PRIVATE_KEY_FILE),
        mpp_public_key: out_dir.join(MPP_PUBLIC_KEY_FILE),
        alipayplus_private_key: out_dir.join(ALIPAYPLUS_PRIVATE_KEY_FILE),
        alipayplus_public_key: out_dir.join(ALIPAYPLUS_PUBLIC_KEY_FILE),
    };
    // Refuse before generating anything, so a half-written set never replaces a good one.
    for path in [
        &files.mpp_private_key,
        &files.mpp_public_key,
        &files.alipayplus_private_key,
        &files.alipayplus_public_key,
    ] {
        if path.exists() {
            return Err(KeyError::Write {
                path: path.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "file exists; keygen never overwrites keys",
                ),
            });
        }
    }
    for (private_path, public_path) in [
        (&files.mpp_private_key, &files.mpp_public_key),
        (&files.alipayplus_private_key, &files.alipayplus_public_key),
    ] {
        let key = PrivateSigningKey::generate()?;
        let private_pem = key.to_pkcs8_pem()?;
        write_new_file(
            private_path,
            secrecy::ExposeSecret::expose_secret(&private_pem).as_bytes(),
            0o600,
        )?;
        write_new_file(public_path, key.public_key().to_pem()?.as_bytes(), 0o644)?;
    }
    Ok(files)
}

/// Creates `path` (failing if it exists) with `mode` set by `open(2)` itself, so a private key
/// is never readable by others, not even for an instant.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let write = |options: &OpenOptions| -> std::io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write(&options).map_err(|error| KeyError::Write {
        path: path.to_owned(),
        error,
    })
}
