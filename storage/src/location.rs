//! Where a storage root lives: URI parsing and joining sub-locations.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{Result, StorageError};

/// A parsed location: where a storage root lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An absolute local directory.
    Local(PathBuf),
    /// A bucket and a key prefix without leading or trailing '/' (empty = whole bucket).
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Accepts `s3://bucket[/prefix]`, `file:///abs/path`, or a plain filesystem path (relative
    /// resolved against cwd). Errors (InvalidUri) on empty bucket, `file://relative`, other
    /// schemes.
    pub fn parse(uri: &str) -> Result<Location> {
        let invalid = |reason: &str| StorageError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if uri.is_empty() {
            return Err(invalid("empty location"));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("missing bucket name"));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty()
                && prefix
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(invalid(
                    "empty, '.' and '..' segments are not allowed in an S3 prefix",
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "file:// URIs must be absolute (file:///abs/path); use a plain path for relative ones",
                ));
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (expected s3://, file:// or a plain path)"
            )));
        }
        // `absolute` does not touch the filesystem beyond reading cwd, so a location can be
        // parsed before its folder exists.
        std::path::absolute(uri)
            .map(Location::Local)
            .map_err(|e| invalid(&format!("cannot resolve relative path: {e}")))
    }

    /// Child location `self/sub`. `sub` is split on '/'; empty and `.` segments are ignored and
    /// `..` segments are dropped (with a warning) so a child can never escape its parent.
    pub fn join(&self, sub: &str) -> Location {
        match self {
            Location::Local(root) => Location::Local(join_local(root, sub)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: join_prefix(prefix, sub),
            },
        }
    }

    /// The folder holding this location and its last segment: how a URI that names one object
    /// opens as a store and a key. `None` at a bucket or filesystem root.
    pub fn split_object(&self) -> Option<(Location, String)> {
        match self {
            Location::Local(path) => {
                let name = path.file_name()?.to_str()?.to_string();
                Some((Location::Local(path.parent()?.to_path_buf()), name))
            }
            Location::S3 { bucket, prefix } if prefix.is_empty() => None,
            Location::S3 { bucket, prefix } => {
                let (folder, name) = prefix.rsplit_once('/').unwrap_or(("", prefix));
                Some((
                    Location::S3 {
                        bucket: bucket.clone(),
                        prefix: folder.to_string(),
                    },
                    name.to_string(),
                ))
            }
        }
    }

    /// Canonical URI: `s3://bucket/prefix` (or `s3://bucket`) or `file:///abs`.
    pub fn uri(&self) -> String {
        match self {
            Location::Local(path) => format!("file://{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Segments of a sub-location: empty and `.` segments are ignored and `..` segments are dropped
/// (with a warning) so a child can never escape its parent.
fn sub_segments(sub: &str) -> impl Iterator<Item = &str> {
    sub.split('/').filter(move |seg| {
        if *seg == ".." {
            tracing::warn!(sub, "ignoring '..' segment in storage sub-location");
        }
        !seg.is_empty() && *seg != "." && *seg != ".."
    })
}

/// `root/sub` for a local root. The backends join with these too, so a store's backend and
/// its [`Location`] stay in step.
pub(super) fn join_local(root: &Path, sub: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(sub_segments(sub));
    path
}

/// `prefix/sub` for an S3 key prefix (no leading or trailing '/', like [`Location::S3`]).
pub(super) fn join_prefix(prefix: &str, sub: &str) -> String {
    let mut out = prefix.to_string();
    for seg in sub_segments(sub) {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(seg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Location {
        Location::parse(s).expect("valid location")
    }

    #[test]
    fn parse_s3() {
        assert_eq!(
            parse("s3://bkt"),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse("s3://bkt/a/b/"),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(parse("s3://bkt/a/b/").uri(), "s3://bkt/a/b");
        assert_eq!(parse("s3://bkt/").uri(), "s3://bkt");
    }

    #[test]
    fn parse_local() {
        assert_eq!(parse("file:///data/x"), Location::Local("/data/x".into()));
        assert_eq!(parse("/data/x"), Location::Local("/data/x".into()));
        assert_eq!(parse("/data/x").uri(), "file:///data/x");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(parse("rel/dir"), Location::Local(cwd.join("rel/dir")));
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "s3://",
            "s3:///prefix",
            "s3://b/../x",
            "s3://b/a//x",
            "file://relative/x",
            "gs://bucket/x",
            "http://host/x",
        ] {
            match Location::parse(bad) {
                Err(StorageError::InvalidUri { uri, .. }) => assert_eq!(uri, bad),
                other => panic!("{bad:?} should be invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_object_location_splits_into_its_folder_and_name() {
        let split = |uri: &str| {
            parse(uri)
                .split_object()
                .map(|(folder, name)| (folder.uri(), name))
        };
        assert_eq!(
            split("s3://b/dir/names.txt"),
            Some(("s3://b/dir".into(), "names.txt".into()))
        );
        assert_eq!(
            split("s3://b/names.txt"),
            Some(("s3://b".into(), "names.txt".into()))
        );
        assert_eq!(split("s3://b"), None);
        assert_eq!(
            split("file:///etc/names.txt"),
            Some(("file:///etc".into(), "names.txt".into()))
        );
        assert_eq!(split("/"), None);
    }

    #[test]
    fn join_locations() {
        let s3 = parse("s3://b");
        assert_eq!(s3.join("x/y").uri(), "s3://b/x/y");
        assert_eq!(s3.join("x").join("/y/").uri(), "s3://b/x/y");
        assert_eq!(s3.join("").uri(), "s3://b");
        assert_eq!(parse("s3://b/p").join("../q").uri(), "s3://b/p/q");
        assert_eq!(parse("/r").join("a/b"), Location::Local("/r/a/b".into()));
        assert_eq!(
            parse("/r").join("./a/../b"),
            Location::Local("/r/a/b".into())
        );
    }
}
