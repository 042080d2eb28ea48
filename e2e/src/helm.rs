//! Renders `charts/weir` with the `helm` binary that scripts/install-helm.sh installs (or one on
//! PATH) and parses the output into [`Manifests`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::manifests::Manifests;
use crate::{Error, Result, repo_root};

/// Release name and namespace every rendering uses.
pub const RELEASE: &str = "weir";
pub const RELEASE_NAMESPACE: &str = "weir-system";

/// Where scripts/install-helm.sh puts its binaries.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_TOOLS_DIR") {
        return PathBuf::from(dir).join("bin");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/weir-tools/bin")
}

/// `$HELM`, then the tools dir, then PATH.
pub fn find_helm() -> Result<PathBuf> {
    if let Some(helm) = std::env::var_os("HELM") {
        return Ok(PathBuf::from(helm));
    }
    let installed = tools_dir().join("helm");
    if is_executable(&installed) {
        return Ok(installed);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("helm"))
        .find(|candidate| is_executable(candidate));
    on_path.ok_or_else(|| Error::HelmMissing {
        searched: installed.display().to_string(),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/weir")
}

/// `helm template` of the chart with `--set key=value` for each pair.
pub fn render(values: &[(&str, &str)]) -> Result<Manifests> {
    let yaml = template(values)?;
    Manifests::parse(&yaml, "helm template output")
}

/// The raw output of `helm template`; an error carries helm's stderr (e.g. a `fail` message).
pub fn template(values: &[(&str, &str)]) -> Result<String> {
    let helm = find_helm()?;
    let mut args: Vec<String> = vec![
        "template".into(),
        RELEASE.into(),
        chart_dir().display().to_string(),
        "--namespace".into(),
        RELEASE_NAMESPACE.into(),
    ];
    for (key, value) in values {
        args.push("--set".into());
        args.push(format!("{key}={value}"));
    }
    let output = Command::new(&helm)
        .args(&args)
        .output()
        .map_err(|source| Error::Spawn {
            program: helm.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Helm {
            args: args.join(" "),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
