//! The `gust` command line's saved login: `key=value` lines in one file.
//!
//! Holds what `resume` needs (server, device id, token) plus the user for
//! display. The token is a credential, so the file is written owner-only
//! (0600 on unix) and replaced atomically through a temporary file.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use crate::protocol::UserId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionFile {
    pub server: String,
    pub user_id: UserId,
    pub username: String,
    pub device_id: String,
    pub token: Vec<u8>,
}

impl SessionFile {
    pub fn to_text(&self) -> String {
        format!(
            "# gust session; the token is a credential, keep this file private\n\
             server={}\nuser_id={}\nusername={}\ndevice_id={}\ntoken={}\n",
            self.server,
            self.user_id,
            self.username,
            self.device_id,
            hex_encode(&self.token)
        )
    }

    /// Parses the file. Blank lines and `#` comments are skipped; unknown keys
    /// are ignored so a newer client's file still loads.
    pub fn parse(text: &str) -> Result<SessionFile, String> {
        let (mut server, mut user_id, mut username, mut device_id, mut token) =
            (None, None, None, None, None);
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {}: expected key=value", number + 1));
            };
            let value = value.trim().to_string();
            match key.trim() {
                "server" => server = Some(value),
                "user_id" => {
                    user_id = Some(
                        value
                            .parse::<UserId>()
                            .map_err(|_| format!("line {}: bad user_id", number + 1))?,
                    )
                }
                "username" => username = Some(value),
                "device_id" => device_id = Some(value),
                "token" => {
                    token = Some(
                        hex_decode(&value)
                            .ok_or_else(|| format!("line {}: bad token", number + 1))?,
                    )
                }
                _ => {}
            }
        }
        let missing = |key: &str| format!("no {key}");
        Ok(SessionFile {
            server: server.ok_or_else(|| missing("server"))?,
            user_id: user_id.ok_or_else(|| missing("user_id"))?,
            username: username.ok_or_else(|| missing("username"))?,
            device_id: device_id.ok_or_else(|| missing("device_id"))?,
            token: token.ok_or_else(|| missing("token"))?,
        })
    }

    pub fn load(path: &Path) -> io::Result<SessionFile> {
        let text = fs::read_to_string(path)?;
        SessionFile::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Writes the file (creating parent directories), owner-only.
    pub fn store(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = Path::new(&tmp_name);
        {
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(tmp)?;
            // The mode above applies only when the file is created.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            file.write_all(self.to_text().as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(tmp, path)
    }
}

pub fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionFile {
        SessionFile {
            server: "127.0.0.1:7700".into(),
            user_id: 42,
            username: "alice".into(),
            device_id: "cli".into(),
            token: (0u8..32).collect(),
        }
    }

    #[test]
    fn text_round_trip() {
        let s = sample();
        assert_eq!(SessionFile::parse(&s.to_text()), Ok(s));
    }

    #[test]
    fn parse_tolerates_comments_blanks_and_unknown_keys() {
        let text =
            "\n# hi\nserver = h:1\nuser_id=1\nusername=bob\nfuture=x\ndevice_id=d\ntoken=00ff\n";
        let s = SessionFile::parse(text).unwrap();
        assert_eq!(s.server, "h:1");
        assert_eq!(s.token, vec![0, 255]);
    }

    #[test]
    fn parse_errors() {
        assert!(SessionFile::parse("server=x")
            .unwrap_err()
            .contains("user_id"));
        assert!(SessionFile::parse("garbage").is_err());
        assert!(SessionFile::parse("user_id=x").is_err());
        assert!(SessionFile::parse("token=abc").is_err());
    }

    #[test]
    fn hex() {
        assert_eq!(hex_encode(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(hex_decode("0001ABff"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("é1"), None);
        assert_eq!(hex_decode(""), Some(vec![]));
    }

    #[test]
    fn file_round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/session");
        let s = sample();
        s.store(&path).unwrap();
        assert_eq!(SessionFile::load(&path).unwrap(), s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Overwrite keeps working.
        let mut t = s.clone();
        t.username = "carol".into();
        t.store(&path).unwrap();
        assert_eq!(SessionFile::load(&path).unwrap().username, "carol");
    }
}
