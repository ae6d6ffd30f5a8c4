//! Profiles: what a run aggregated, written for other tools and read back. The
//! extension of the file picks the format ([`Format`]): pprof's `profile.proto`
//! gzipped (`pprof`, what Parca, Pyroscope and `go tool pprof` read), Brendan Gregg's
//! folded stacks and a flame graph SVG drawn by inferno (`flame`), or the snapshot as
//! JSON. A file is written whole or not at all ([`Destination`]: a temporary file in
//! the same directory, renamed over the name at the end).
//!
//! Pure over the model, except the file writes. `proto` holds pprof's message types,
//! generated once by prost-build and kept in the tree.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use tempfile::NamedTempFile;

use crate::model::{locations::Site, snapshot::Snapshot};

pub mod diff;
pub mod flame;
pub mod pprof;
pub mod proto;

/// What a profile file holds, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.pb.gz` or `.pprof`: pprof's protocol buffer, gzipped.
    Pprof,
    /// `.folded`: one line per stack, `frame;frame;... weight`.
    Folded,
    /// `.svg`: a flame graph.
    Svg,
    /// `.json`: the snapshot, as `stat --json` prints it.
    Json,
}

impl Format {
    pub fn of(path: &Path) -> Result<Self, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let format = if name.ends_with(".pb.gz") || name.ends_with(".pprof") {
            Self::Pprof
        } else if name.ends_with(".folded") {
            Self::Folded
        } else if name.ends_with(".svg") {
            Self::Svg
        } else if name.ends_with(".json") {
            Self::Json
        } else {
            return Err(Error::UnknownFormat(path.display().to_string()));
        };
        Ok(format)
    }
}

/// What a profile is weighed by (folded stacks and flame graphs): samples, the
/// sampling event's growth, or one member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weight {
    Samples,
    /// The sampling event (e.g. `cycles`, or `cpu-clock` in nanoseconds).
    Period(String),
    /// A counting member of the sampling group, by position and name.
    Member(usize, String),
}

impl Weight {
    /// `--weight`'s value against a run's sampling event and members.
    pub fn parse(value: &str, event: &str, members: &[String]) -> Result<Self, Error> {
        if value == "samples" {
            return Ok(Self::Samples);
        }
        if value == event || value == "period" {
            return Ok(Self::Period(event.to_owned()));
        }
        if let Some(i) = members.iter().position(|m| m == value) {
            return Ok(Self::Member(i, value.to_owned()));
        }
        let mut choices = vec!["samples".to_owned(), event.to_owned()];
        choices.extend(members.iter().cloned());
        Err(Error::BadWeight {
            got: value.to_owned(),
            choices: choices.join(", "),
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Samples => "samples",
            Self::Period(n) | Self::Member(_, n) => n,
        }
    }

    /// What one site weighs.
    pub fn of(&self, site: &Site) -> u64 {
        match self {
            Self::Samples => site.samples,
            Self::Period(_) => site.period_sum,
            Self::Member(i, _) => site.counts.get(*i).copied().unwrap_or(0),
        }
    }
}

/// The sampling event of a snapshot, as profiles name it: the event every CPU
/// sampled (the distinct ones joined with `+` when CPUs differ).
pub fn sampling_event(s: &Snapshot) -> String {
    event_name(s.cpus.iter().map(|c| c.event.as_str()))
}

/// The name of the sampling event the CPUs sampled (`+` between distinct ones).
pub fn event_name<'a>(events: impl IntoIterator<Item = &'a str>) -> String {
    let mut events: Vec<&str> = events.into_iter().collect();
    events.sort_unstable();
    events.dedup();
    if events.is_empty() {
        "events".to_owned()
    } else {
        events.join("+")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{0}`: the extension picks the profile format: .pb.gz or .pprof (pprof), .folded \
         (folded stacks), .svg (flame graph) or .json (the snapshot)"
    )]
    UnknownFormat(String),

    #[error("`{0}` exists; --force overwrites it, or -o names another file")]
    Exists(String),

    #[error("cannot write `{path}` ({source}); -o must name a file in a writable directory")]
    Unwritable {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot read `{path}` ({source})")]
    Unreadable {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "`{path}` is not a pprof profile ({why}); `sampler report` reads the .pb.gz and \
         .pprof files that `sampler record` and `serve`'s /debug/pprof/profile write"
    )]
    NotPprof { path: String, why: String },

    #[error("--weight `{got}` is not counted by this run; it can be one of: {choices}")]
    BadWeight { got: String, choices: String },

    #[error("cannot draw the flame graph: {0}")]
    FlameGraph(String),
}

/// Where a profile goes: checked before sampling starts (format, an existing file,
/// a writable directory), written at the end through a temporary file in the same
/// directory, renamed over the name, so that a run killed at any point leaves no
/// half-written profile.
#[derive(Debug)]
pub struct Destination {
    path: PathBuf,
    format: Format,
    force: bool,
    temp: NamedTempFile,
}

impl Destination {
    pub fn prepare(path: &Path, force: bool) -> Result<Self, Error> {
        let format = Format::of(path)?;
        let shown = path.display().to_string();
        let unwritable = |source| Error::Unwritable {
            path: shown.clone(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(unwritable(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a directory",
                )));
            }
            Ok(_) if !force => return Err(Error::Exists(shown)),
            _ => {}
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(unwritable)?;
        Ok(Self {
            path: path.to_owned(),
            format,
            force,
            temp,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` and renames the file into place (over an existing one only
    /// with `--force`).
    pub fn commit(mut self, bytes: &[u8]) -> Result<(), Error> {
        let shown = self.path.display().to_string();
        let unwritable = |source| Error::Unwritable {
            path: shown.clone(),
            source,
        };
        let file = self.temp.as_file_mut();
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt as _;
                file.set_permissions(std::fs::Permissions::from_mode(0o644))
            })
            .and_then(|()| file.sync_all())
            .map_err(unwritable)?;
        let persisted = if self.force {
            self.temp.persist(&self.path)
        } else {
            self.temp.persist_noclobber(&self.path)
        };
        match persisted {
            Ok(_) => Ok(()),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Err(Error::Exists(shown)),
            Err(e) => Err(unwritable(e.error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sampler-profile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_extension_picks_the_format() {
        for (name, want) in [
            ("x.pb.gz", Format::Pprof),
            ("x.PPROF", Format::Pprof),
            ("a/b/x.folded", Format::Folded),
            ("x.svg", Format::Svg),
            ("x.json", Format::Json),
        ] {
            assert_eq!(Format::of(Path::new(name)).unwrap(), want, "{name}");
        }
        for bad in ["x.gz", "x", "x.txt", "svg"] {
            let e = Format::of(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(".pb.gz") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn weights_are_the_runs_quantities() {
        let members = vec!["instructions".to_owned(), "cache-misses".to_owned()];
        assert_eq!(
            Weight::parse("samples", "cycles", &members).unwrap(),
            Weight::Samples
        );
        assert_eq!(
            Weight::parse("cycles", "cycles", &members).unwrap(),
            Weight::Period("cycles".into())
        );
        assert_eq!(
            Weight::parse("cache-misses", "cycles", &members).unwrap(),
            Weight::Member(1, "cache-misses".into())
        );
        let e = Weight::parse("branches", "cycles", &members)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`branches`") && e.contains("samples, cycles, instructions, cache-misses"),
            "{e}"
        );
    }

    #[test]
    fn a_profile_is_written_whole_and_not_over_a_file() {
        let d = dir("write");
        let path = d.join("p.folded");
        let dest = Destination::prepare(&path, false).unwrap();
        // Nothing under the name until the end: only the temporary file.
        assert!(!path.exists());
        dest.commit(b"main;f 3\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"main;f 3\n");
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let e = Destination::prepare(&path, false).unwrap_err().to_string();
        assert!(e.contains("exists") && e.contains("--force"), "{e}");
        Destination::prepare(&path, true)
            .unwrap()
            .commit(b"x 1\n")
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x 1\n");
        // A file that appeared while sampling is not overwritten without --force.
        let later = d.join("later.svg");
        let dest = Destination::prepare(&later, false).unwrap();
        std::fs::write(&later, "theirs").unwrap();
        assert!(
            dest.commit(b"ours")
                .unwrap_err()
                .to_string()
                .contains("exists")
        );
        assert_eq!(std::fs::read(&later).unwrap(), b"theirs");
    }

    #[test]
    fn unwritable_places_are_refused_up_front() {
        let d = dir("bad");
        let e = Destination::prepare(&d.join("missing/x.svg"), false).unwrap_err();
        assert!(e.to_string().starts_with("cannot write"), "{e}");
        let sub = d.join("sub.svg");
        std::fs::create_dir_all(&sub).unwrap();
        let e = Destination::prepare(&sub, true).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }
}
