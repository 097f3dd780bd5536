//! `spark-shuffle-agent prepare-dirs`: the init container's work, so the DaemonSet needs one image.
//!
//! kubelet creates a missing hostPath directory as root:root 0755, where executors running as
//! uid 185 cannot create their block-manager dirs. This command creates each directory it is
//! given (with parents), hands the directory itself to the executors' uid:gid and sets its mode,
//! then prints one `ls -ldn`-like line per directory. It never recurses into what executors
//! wrote, and it refuses a path that exists as anything but a directory (a symlink planted on
//! the node must not redirect a chown run as root). It must not start any server.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Arguments of `prepare-dirs`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// uid:gid to hand the directories to (the uid and gid Spark's images run executors as).
    #[arg(long, value_name = "UID:GID", default_value = "185:185", value_parser = parse_owner)]
    pub owner: (u32, u32),
    /// A shuffle root executors write under; repeat for several.
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<PathBuf>,
    /// Mode of each root, octal. 2770: new dirs inherit the group, others get nothing.
    #[arg(long, value_name = "OCTAL", default_value = "2770", value_parser = parse_mode)]
    pub root_mode: u32,
    /// The agent's state dir (agent.state.dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Mode of the state dir, octal.
    #[arg(long, value_name = "OCTAL", default_value = "0750", value_parser = parse_mode)]
    pub state_mode: u32,
}

/// Why a directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The path exists and is not a directory (possibly a symlink).
    #[error("{0}: exists and is not a directory (symlinks are refused)")]
    NotADirectory(PathBuf),
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// `UID:GID`, numeric (the image has no user database worth asking); also `check --executor`.
pub fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected UID:GID, e.g. 185:185")?;
    let num = |v: &str| v.parse::<u32>().map_err(|_| format!("{v:?} is not a numeric id"));
    Ok((num(u)?, num(g)?))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode (0000 to 7777)")),
    }
}

/// Runs the command; the exit code is 0 when every directory is prepared, else 1.
pub fn command(args: &PrepareArgs) -> u8 {
    let mut dirs: Vec<(&Path, u32)> = args.roots.iter().map(|r| (r.as_path(), args.root_mode)).collect();
    if let Some(state) = &args.state_dir {
        dirs.push((state, args.state_mode));
    }
    if dirs.is_empty() {
        eprintln!("error: nothing to prepare: give --root and/or --state-dir");
        return 64;
    }
    let mut code = 0;
    for (dir, mode) in dirs {
        match prepare(dir, args.owner, mode) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Creates `dir`, chowns and chmods it (not what is inside), and describes the result.
pub fn prepare(dir: &Path, (uid, gid): (u32, u32), mode: u32) -> Result<String, PrepareError> {
    let io = |what, source| PrepareError::Io { what, path: dir.to_path_buf(), source };
    fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| io("reading", e))?;
    if !meta.is_dir() {
        return Err(PrepareError::NotADirectory(dir.to_path_buf()));
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(|e| io("chown", e))?;
    // chmod after chown: chown(2) may clear set-id bits, so the mode is set last.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", e))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| io("reading", e))?;
    Ok(format!("{:04o} {}:{} {}", meta.mode() & 0o7777, meta.uid(), meta.gid(), dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("2770"), Ok(0o2770));
        assert_eq!(parse_mode("0750"), Ok(0o750));
        assert!(parse_mode("8").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn owners_are_numeric_uid_and_gid() {
        assert_eq!(parse_owner("185:186"), Ok((185, 186)));
        assert!(parse_owner("spark:spark").is_err());
        assert!(parse_owner("185").is_err());
    }

    #[test]
    fn a_missing_directory_is_created_with_its_mode_and_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let me = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        let line = prepare(&dir, me, 0o2770).unwrap();
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o2770);
        assert_eq!((meta.uid(), meta.gid()), me);
        assert_eq!(line, format!("2770 {}:{} {}", me.0, me.1, dir.display()));
    }

    #[test]
    fn files_inside_are_not_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("shuffle_0_0_0.data");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let me = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        prepare(tmp.path(), me, 0o2770).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn a_symlink_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("local");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let me = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        assert!(matches!(prepare(&link, me, 0o2770), Err(PrepareError::NotADirectory(_))));
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
    }
}
