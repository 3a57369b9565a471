//! pki: the cluster's certificate authority and the certificates it issues (`dfsctl admin ca
//! init`, `dfsctl admin cert issue`, and `dfsctl local up`, which makes both for a local cluster).
//!
//! A certificate names one identity: a role (`meta`, `chunk`, `gateway`, `client`) and an id
//! (a node id for `meta` and `chunk`, a name otherwise). It is written into the certificate as
//! DNS names in the subject alternative names, which is where TLS verification looks:
//! - `<role>.dfs`: what a caller checks when it connects to "some metadata node" or "some chunk
//!   server" (the TLS server name), so a chunk-server certificate cannot pose as a metadata node;
//! - `<role>-<id>.dfs`: who exactly the peer is; servers read it from a client certificate
//!   that the cluster CA signed (`identity_of`), never from a header.
//!
//! What must stay true: the CA key never leaves the directory it was made in (written 0600);
//! node keys are written 0600; an identity is only ever read from a certificate that TLS has
//! already verified against the cluster CA.
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fmt;
use std::path::{Path, PathBuf};

/// The DNS suffix of every identity name.
pub const DOMAIN: &str = "dfs";
/// File names inside a CA directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists: refusing to overwrite a certificate authority (remove it first to start over)")]
    CaExists { path: PathBuf },
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}")]
    BadIdentity(String),
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
}

/// What a certificate's holder is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Meta,
    Chunk,
    Gateway,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Chunk => "chunk",
            Role::Gateway => "gateway",
            Role::Client => "client",
        }
    }

    pub fn parse(s: &str) -> Result<Role, PkiError> {
        match s {
            "meta" => Ok(Role::Meta),
            "chunk" => Ok(Role::Chunk),
            "gateway" => Ok(Role::Gateway),
            "client" => Ok(Role::Client),
            _ => Err(PkiError::BadIdentity(format!(
                "unknown role {s:?}: expected meta, chunk, gateway or client"
            ))),
        }
    }

    /// The TLS server name every holder of this role answers to.
    pub fn server_name(self) -> String {
        format!("{}.{DOMAIN}", self.as_str())
    }
}

/// One certificate holder: a role and an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub id: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.id)
    }
}

impl std::str::FromStr for Identity {
    type Err = PkiError;

    /// The `Display` form: `"<role> <id>"`.
    fn from_str(s: &str) -> Result<Identity, PkiError> {
        let (role, id) = s
            .split_once(' ')
            .ok_or_else(|| PkiError::BadIdentity(format!("{s:?} is not \"<role> <id>\"")))?;
        Identity::new(Role::parse(role)?, id)
    }
}

impl Identity {
    /// Check the id's form: a node id (1..) for meta and chunk, a short name otherwise.
    pub fn new(role: Role, id: &str) -> Result<Identity, PkiError> {
        let ok = match role {
            Role::Meta | Role::Chunk => id.parse::<u64>().is_ok_and(|n| n > 0),
            Role::Gateway | Role::Client => {
                !id.is_empty()
                    && id.len() <= 48
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }
        };
        if !ok {
            return Err(PkiError::BadIdentity(match role {
                Role::Meta | Role::Chunk => format!(
                    "a {} certificate needs a node id (a number from 1), not {id:?}",
                    role.as_str()
                ),
                _ => format!("a {} certificate's id is lower-case letters, digits and '-' (at most 48), not {id:?}", role.as_str()),
            }));
        }
        Ok(Identity {
            role,
            id: id.to_string(),
        })
    }

    /// The node id of a `meta` or `chunk` identity.
    pub fn node_id(&self) -> Option<u64> {
        match self.role {
            Role::Meta | Role::Chunk => self.id.parse().ok(),
            _ => None,
        }
    }

    fn dns_name(&self) -> String {
        format!("{}-{}.{DOMAIN}", self.role.as_str(), self.id)
    }

    /// The file stem for this identity's certificate and key (`chunk-3`).
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.role.as_str(), self.id)
    }
}

/// Read the identity a (verified) certificate names: its `<role>-<id>.dfs` DNS name.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
        .ok_or_else(|| PkiError::BadIdentity("the certificate names no dfs identity".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            let Some(stem) = dns.strip_suffix(&format!(".{DOMAIN}")) else {
                continue;
            };
            if let Some((role, id)) = stem.split_once('-') {
                if let Ok(role) = Role::parse(role) {
                    return Identity::new(role, id);
                }
            }
        }
    }
    Err(PkiError::BadIdentity(
        "the certificate names no dfs identity (<role>-<id>.dfs)".into(),
    ))
}

/// Written beside and renamed, fsynced (a node reloading its files never reads half of one);
/// keys 0600.
fn write_file(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    let write = if private {
        crate::durable::write_secret
    } else {
        crate::durable::write_atomic
    };
    write(path, data.as_bytes()).map_err(|source| PkiError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Make a new cluster CA in `dir` (`ca.pem`, and `ca.key` readable by its owner only). Refuses
/// to replace an existing one: every certificate it signed would stop being trusted.
pub fn init_ca(dir: &Path, name: &str, valid_days: u32) -> Result<PathBuf, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        what: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() || dir.join(CA_KEY).exists() {
        return Err(PkiError::CaExists { path: cert_path });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("dfs cluster CA {name}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, valid_days);
    let cert = params.self_signed(&key)?;
    write_file(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

fn set_validity(params: &mut CertificateParams, valid_days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(valid_days.max(1)));
}

/// Where an issued certificate and its key were written.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Issue a certificate for `identity`, signed by the CA in `ca_dir`, into `out_dir`
/// (`<role>-<id>.pem` and `.key`). `extra_names` are the host names and IP addresses the holder
/// is reached at (kept in the certificate for tools that check them; dfs itself checks the
/// role name). Reissuing replaces the files (a rotation).
pub fn issue(
    ca_dir: &Path,
    identity: &Identity,
    extra_names: &[String],
    out_dir: &Path,
    valid_days: u32,
) -> Result<Issued, PkiError> {
    let ca_key = KeyPair::from_pem(&read_file(&ca_dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read_file(&ca_dir.join(CA_CERT))?, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("dfs {identity}"));
    params.distinguished_name = dn;
    let mut names = vec![identity.role.server_name(), identity.dns_name()];
    names.extend(extra_names.iter().cloned());
    params.subject_alt_names = names
        .into_iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.try_into()?)),
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Every node is both a server and a client of its peers.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, valid_days);
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out_dir).map_err(|source| PkiError::Io {
        what: "create",
        path: out_dir.to_path_buf(),
        source,
    })?;
    let stem = identity.file_stem();
    let out = Issued {
        cert: out_dir.join(format!("{stem}.pem")),
        key: out_dir.join(format!("{stem}.key")),
    };
    // Key first: a node that reloads between the two writes sees the old pair fail to
    // match and keeps its current one until the certificate lands too.
    write_file(&out.key, &key.serialize_pem(), true)?;
    write_file(&out.cert, &cert.pem(), false)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_identity() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca, "test", 30).unwrap();
        assert!(matches!(
            init_ca(&ca, "test", 30),
            Err(PkiError::CaExists { .. })
        ));
        let id = Identity::new(Role::Chunk, "7").unwrap();
        let out = issue(&ca, &id, &["10.0.0.7".into(), "host7".into()], d.path(), 30).unwrap();
        let pem = std::fs::read(&out.cert).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let got = identity_of(&der).unwrap();
        assert_eq!(got, id);
        assert_eq!(got.node_id(), Some(7));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(ca.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_identities_are_refused() {
        assert!(Identity::new(Role::Meta, "0").is_err());
        assert!(Identity::new(Role::Meta, "x").is_err());
        assert!(Identity::new(Role::Client, "Alice").is_err());
        assert!(Identity::new(Role::Client, "").is_err());
        assert!(Identity::new(Role::Client, "alice-2").is_ok());
        assert!(Role::parse("root").is_err());
    }

    use rustls::pki_types::pem::PemObject;
}
