//! A throw-away PKI for the `SASL_SSL` tests: a CA, a server certificate it
//! signs for `127.0.0.1` and `localhost`, and a second CA that signed nothing
//! (a client trusting only it must refuse the server).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The PEM files [`TestPki::generate`] writes.
pub struct TestPki {
    /// The CA a client must trust (`ssl.ca.location`).
    pub ca: PathBuf,
    /// A CA that did not sign the server's certificate.
    pub other_ca: PathBuf,
    /// The server's private key (PKCS#8) and certificate chain, as Kafka's
    /// `ssl.keystore.type=PEM` reads them.
    pub server_keystore: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

impl TestPki {
    /// Generates the CAs and the server certificate into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let authority = ca("nova test CA")?;
        let stranger = ca("some other CA")?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "kafka");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &authority)?;

        let pki = Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_keystore: dir.join("server-keystore.pem"),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
        };
        write(&pki.ca, authority.pem())?;
        write(&pki.other_ca, stranger.pem())?;
        write(
            &pki.server_keystore,
            format!("{}{}{}", key.serialize_pem(), cert.pem(), authority.pem()),
        )?;
        Ok(pki)
    }
}
