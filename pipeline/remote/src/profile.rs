//! S3 settings from the AWS CLI's profile files, which `object_store` does not read:
//! `~/.aws/credentials` and `~/.aws/config` (or `$AWS_SHARED_CREDENTIALS_FILE` and
//! `$AWS_CONFIG_FILE`), profile `$AWS_PROFILE` or `default`.
//!
//! Only static settings are understood: `aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`, `region` and `endpoint_url`. Environment variables win over
//! both files, and the credentials file over the config file, as in the AWS CLI.
//! Profiles that get credentials from a process, SSO or an assumed role are not
//! supported: export the credentials instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// The settings one profile gives; `None` where it says nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Where to look, from the environment: the profile name, whether it was asked for
/// by name (then it must exist), and the two files.
pub(crate) struct Sources {
    pub name: String,
    pub explicit: bool,
    pub credentials: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl Sources {
    pub fn from_env() -> Sources {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let file = |k: &str, default: &str| {
            var(k)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let name = var("AWS_PROFILE");
        Sources {
            explicit: name.is_some(),
            name: name.unwrap_or_else(|| "default".into()),
            credentials: file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            config: file("AWS_CONFIG_FILE", "config"),
        }
    }

    /// Reads the profile from both files. Missing files are skipped; a profile asked
    /// for by name that neither file has is an error naming both.
    pub fn load(&self) -> Result<Option<Profile>, String> {
        let credentials = read_section(self.credentials.as_deref(), &self.name)?;
        // The config file names profiles `[profile NAME]`, except `[default]`.
        let config = read_section(self.config.as_deref(), &format!("profile {}", self.name))?.or(
            if self.name == "default" {
                read_section(self.config.as_deref(), "default")?
            } else {
                None
            },
        );
        if credentials.is_none() && config.is_none() {
            if self.explicit {
                let shown = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map_or("(no file)".into(), |p| p.display().to_string())
                };
                return Err(format!(
                    "AWS_PROFILE={}: no such profile in {} or {}",
                    self.name,
                    shown(&self.credentials),
                    shown(&self.config)
                ));
            }
            return Ok(None);
        }
        let (credentials, config) = (credentials.unwrap_or_default(), config.unwrap_or_default());
        let get = |k: &str| credentials.get(k).or_else(|| config.get(k)).cloned();
        Ok(Some(Profile {
            access_key_id: get("aws_access_key_id"),
            secret_access_key: get("aws_secret_access_key"),
            session_token: get("aws_session_token"),
            region: get("region"),
            endpoint_url: get("endpoint_url"),
        }))
    }
}

impl Profile {
    /// Fills in what the environment left unset. Credentials go all or nothing: a
    /// key id or secret from the environment keeps the profile's out.
    pub fn apply(self, mut builder: AmazonS3Builder) -> AmazonS3Builder {
        let unset = |b: &AmazonS3Builder, k: AmazonS3ConfigKey| b.get_config_value(&k).is_none();
        if unset(&builder, AmazonS3ConfigKey::AccessKeyId)
            && unset(&builder, AmazonS3ConfigKey::SecretAccessKey)
        {
            for (key, value) in [
                (AmazonS3ConfigKey::AccessKeyId, self.access_key_id),
                (AmazonS3ConfigKey::SecretAccessKey, self.secret_access_key),
                (AmazonS3ConfigKey::Token, self.session_token),
            ] {
                if let Some(v) = value {
                    builder = builder.with_config(key, v);
                }
            }
        }
        for (key, value) in [
            (AmazonS3ConfigKey::Region, self.region),
            (AmazonS3ConfigKey::Endpoint, self.endpoint_url),
        ] {
            if let Some(v) = value.filter(|_| unset(&builder, key)) {
                builder = builder.with_config(key, v);
            }
        }
        builder
    }
}

/// The `key = value` pairs of `[section]` in an INI file; `None` if the file or the
/// section does not exist.
fn read_section(
    path: Option<&Path>,
    section: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let Some(path) = path else { return Ok(None) };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Ok(parse_ini(&text).remove(section))
}

/// A minimal reader of the AWS CLI's INI files: `[section]` headers, `key = value`
/// lines, `#` and `;` comment lines. Indented lines (the values of nested settings
/// such as `s3 =`) are skipped. Keys are lowercased, as the AWS CLI treats them.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((key, value))) = (&current, line.split_once('=')) {
            sections
                .get_mut(section)
                .expect("entered above")
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "\
# a comment
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = secret-default

[lab]
aws_access_key_id=AKILAB
aws_secret_access_key = secret-lab
aws_session_token = token-lab
";

    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile  lab]
region = us-east-2
endpoint_url = http://127.0.0.1:9000
s3 =
    multipart_threshold = 64MB
; the credentials file wins over this
aws_access_key_id = AKICONFIG
";

    fn sources(dir: &Path, name: &str, explicit: bool) -> Sources {
        std::fs::write(dir.join("credentials"), CREDENTIALS).unwrap();
        std::fs::write(dir.join("config"), CONFIG).unwrap();
        Sources {
            name: name.into(),
            explicit,
            credentials: Some(dir.join("credentials")),
            config: Some(dir.join("config")),
        }
    }

    #[test]
    fn a_named_profile_merges_both_files_credentials_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = sources(dir.path(), "lab", true).load().unwrap().unwrap();
        assert_eq!(
            p,
            Profile {
                access_key_id: Some("AKILAB".into()),
                secret_access_key: Some("secret-lab".into()),
                session_token: Some("token-lab".into()),
                region: Some("us-east-2".into()),
                endpoint_url: Some("http://127.0.0.1:9000".into()),
            }
        );
    }

    #[test]
    fn the_default_profile_is_plain_default_in_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = sources(dir.path(), "default", false)
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert_eq!(p.endpoint_url, None);
    }

    #[test]
    fn a_missing_profile_is_an_error_only_when_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = sources(dir.path(), "nope", true).load().unwrap_err();
        assert!(
            err.contains("AWS_PROFILE=nope") && err.contains("credentials"),
            "{err}"
        );
        assert_eq!(sources(dir.path(), "nope", false).load().unwrap(), None);
        let none = Sources {
            name: "default".into(),
            explicit: false,
            credentials: Some(dir.path().join("absent")),
            config: None,
        };
        assert_eq!(none.load().unwrap(), None);
    }

    #[test]
    fn the_environment_wins_and_credentials_go_all_or_nothing() {
        let profile = Profile {
            access_key_id: Some("AKIPROFILE".into()),
            secret_access_key: Some("secret-profile".into()),
            session_token: None,
            region: Some("us-east-2".into()),
            endpoint_url: Some("http://127.0.0.1:9000".into()),
        };
        let env = AmazonS3Builder::new()
            .with_config(AmazonS3ConfigKey::AccessKeyId, "AKIENV")
            .with_config(AmazonS3ConfigKey::Region, "ap-south-1");
        let b = profile.clone().apply(env);
        let get = |b: &AmazonS3Builder, k| b.get_config_value(&k);
        assert_eq!(
            get(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIENV")
        );
        assert_eq!(get(&b, AmazonS3ConfigKey::SecretAccessKey), None);
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:9000")
        );
        let b = profile.apply(AmazonS3Builder::new());
        assert_eq!(
            get(&b, AmazonS3ConfigKey::SecretAccessKey).as_deref(),
            Some("secret-profile")
        );
    }
}
