//! The files in `acme.storage_dir`: `<first domain>.pem` (the chain, leaf first),
//! `<first domain>.key` (its private key, mode 0600) and `account.json` (the ACME account's
//! key and URL, with the directory it belongs to; mode 0600).
//!
//! Every file is written aside (`.<name>.tmp`, created with its final mode, synced) and
//! renamed into place, so a reader (a restart, or `tls_certificates` pointing at these files)
//! never sees half a file. The key is renamed before the chain: a crash between the two leaves
//! a pair that fails to load, and the service then orders a new one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};

use crate::config::TlsCertificate;

/// Mode of the private key and the account file.
const SECRET: u32 = 0o600;
/// Mode of the certificate chain (public).
const PUBLIC: u32 = 0o644;

/// The ACME files of one certificate.
#[derive(Debug, Clone)]
pub(super) struct Storage {
    dir: PathBuf,
    /// The first domain: the files' stem.
    stem: String,
}

/// `account.json`: credentials and the directory they were created at.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory_url: String,
    credentials: AccountCredentials,
}

impl Storage {
    /// The files for a certificate named after `first_domain`, in `dir`.
    pub(super) fn new(dir: &Path, first_domain: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            stem: first_domain.to_string(),
        }
    }

    /// The chain and key files.
    pub(super) fn files(&self) -> TlsCertificate {
        TlsCertificate {
            cert_file: self.dir.join(format!("{}.pem", self.stem)),
            key_file: self.dir.join(format!("{}.key", self.stem)),
        }
    }

    fn account_file(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Creates the directory (mode 0700) if it is missing.
    pub(super) fn ensure_dir(&self) -> io::Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new().mode(0o700).create(&self.dir)
    }

    /// The stored chain, if any.
    pub(super) fn read_chain(&self) -> io::Result<Vec<u8>> {
        fs::read(self.files().cert_file)
    }

    /// Stores a chain and its key.
    pub(super) fn store_certificate(&self, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        self.ensure_dir()?;
        let files = self.files();
        let key = write_aside(&files.key_file, key_pem.as_bytes(), SECRET)?;
        let chain = write_aside(&files.cert_file, chain_pem.as_bytes(), PUBLIC)?;
        fs::rename(&key, &files.key_file)?;
        fs::rename(&chain, &files.cert_file)?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// The stored account, if there is one for `directory_url`.
    pub(super) fn account(&self, directory_url: &str) -> Option<AccountCredentials> {
        let path = self.account_file();
        let text = fs::read(&path).ok()?;
        match serde_json::from_slice::<StoredAccount>(&text) {
            Ok(a) if a.directory_url == directory_url => Some(a.credentials),
            Ok(a) => {
                log::info!(
                    "acme: {} is an account at {}, not {directory_url}: creating one",
                    path.display(),
                    a.directory_url
                );
                None
            }
            Err(e) => {
                log::warn!(
                    "acme: {} is unreadable ({e}): creating an account",
                    path.display()
                );
                None
            }
        }
    }

    /// Stores the account created at `directory_url`.
    pub(super) fn store_account(
        &self,
        directory_url: &str,
        credentials: AccountCredentials,
    ) -> io::Result<()> {
        self.ensure_dir()?;
        let stored = StoredAccount {
            directory_url: directory_url.to_string(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(io::Error::other)?;
        let path = self.account_file();
        let aside = write_aside(&path, &json, SECRET)?;
        fs::rename(aside, &path)?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Forgets the stored account (the CA no longer knows it).
    pub(super) fn forget_account(&self) {
        let path = self.account_file();
        if let Err(e) = fs::remove_file(&path) {
            log::warn!("acme: cannot remove {}: {e}", path.display());
        }
    }
}

/// Writes `bytes` to `.<name>.tmp` beside `path`, created with `mode` and synced; returns
/// that path, for the caller to rename.
fn write_aside(path: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let aside = path.with_file_name(format!(".{name}.tmp"));
    // a leftover from a crash may have another mode; the mode applies only on creation
    match fs::remove_file(&aside) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&aside)?;
    // the umask may have taken bits away; the mode is exactly this
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(aside)
}

/// Makes the renames durable (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_0600_and_files_are_replaced_whole() {
        let dir = std::env::temp_dir()
            .join(format!("fulcrum-acme-storage-{}", std::process::id()))
            .join("store");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let s = Storage::new(&dir, "example.com");
        s.store_certificate("chain 1", "key 1").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let files = s.files();
        assert_eq!(files.cert_file, dir.join("example.com.pem"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&files.key_file), 0o600);
        assert_eq!(mode(&files.cert_file), 0o644);
        s.store_certificate("chain 2", "key 2").unwrap();
        assert_eq!(fs::read_to_string(&files.key_file).unwrap(), "key 2");
        assert_eq!(s.read_chain().unwrap(), b"chain 2");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(s.account("https://ca.example/dir").is_none());

        // the account is kept for its directory only, 0600
        let credentials: AccountCredentials = serde_json::from_str(
            r#"{"id": "https://ca.example/acct/1", "key_pkcs8": "AAAA",
                "directory": "https://ca.example/dir"}"#,
        )
        .unwrap();
        s.store_account("https://ca.example/dir", credentials)
            .unwrap();
        assert_eq!(mode(&dir.join("account.json")), 0o600);
        assert!(s.account("https://ca.example/dir").is_some());
        assert!(s.account("https://other.example/dir").is_none());
        s.forget_account();
        assert!(s.account("https://ca.example/dir").is_none());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
