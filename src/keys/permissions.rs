//! The private-key file permission policy: whether anyone besides the owner (others, or a group
//! this process is not in) may read a key file ([`private_key_exposure`]).
//!
//! It only looks at metadata and at this process's groups; it never reads or changes a key file,
//! and never warns itself (`observe::private_key_file_exposed` does).

use std::path::Path;

/// Who besides the owner may read a private key file, when anyone may: the file's mode when it
/// is readable by others, or by a group this process is not a member of (a group of its own, such
/// as the `fsGroup` Kubernetes gives secret volumes with mode 0440, is the process itself). Errors
/// reading the metadata are left to the read that follows.
pub(crate) fn private_key_exposure(path: &Path) -> Option<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let metadata = std::fs::metadata(path).ok()?;
    let mode = metadata.permissions().mode() & 0o777;
    let others = mode & 0o004 != 0;
    let foreign_group = mode & 0o040 != 0 && !own_groups().contains(&metadata.gid());
    (others || foreign_group).then_some(mode)
}

/// The process's effective and supplementary group ids, from `/proc/self/status` (empty where it
/// cannot be read, which makes every group-readable key count as exposed).
fn own_groups() -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(gids) = line.strip_prefix("Gid:") {
            // Real, effective, saved, filesystem: the effective one decides access.
            groups.extend(
                gids.split_whitespace()
                    .nth(1)
                    .and_then(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(gids) = line.strip_prefix("Groups:") {
            groups.extend(
                gids.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PKCS8: &str = include_str!("../../tests/fixtures/mpp_private_key.pem");

    #[test]
    fn a_key_file_readable_by_others_or_a_foreign_group_is_exposed() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, PKCS8).unwrap();
        let chmod = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        chmod(0o600);
        assert_eq!(private_key_exposure(&path), None);
        chmod(0o644);
        assert_eq!(private_key_exposure(&path), Some(0o644));
        chmod(0o604);
        assert_eq!(private_key_exposure(&path), Some(0o604));
        // A new file gets this process's effective group: group-readable stays among ourselves.
        let gid = std::fs::metadata(&path).unwrap().gid();
        assert!(own_groups().contains(&gid), "{gid} in {:?}", own_groups());
        chmod(0o640);
        assert_eq!(private_key_exposure(&path), None);
        // Handing the file to a group we are not in needs root; elsewhere that case is skipped.
        let foreign = (60_000..65_000)
            .find(|g| !own_groups().contains(g))
            .unwrap();
        if std::os::unix::fs::chown(&path, None, Some(foreign)).is_ok() {
            assert_eq!(private_key_exposure(&path), Some(0o640));
        }
        assert_eq!(private_key_exposure(&dir.path().join("absent.pem")), None);
    }
}
