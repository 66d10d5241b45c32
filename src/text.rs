//! One-line text for logs, errors and terminals: error chains and shortened untrusted text.
//! Pure.

/// `e: cause: cause`, the way operators want to read an error on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The reason rustls refused a peer's certificate, wherever it is in `e`'s chain: the errors an
/// I/O error wraps included (`source()` skips them; hyper-rustls wraps rustls' error in two).
/// For the advice that goes with it.
pub fn refused_certificate<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        let mut node = c;
        loop {
            if let Some(rustls::Error::InvalidCertificate(cert)) = node.downcast_ref() {
                return Some(cert);
            }
            match node
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => node = inner,
                None => break,
            }
        }
        cur = c.source();
    }
    None
}

/// At most `max` characters, control characters replaced, so a hostile body cannot mangle logs.
pub fn shorten(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod refused_tests {
    #[test]
    fn finds_a_refused_certificate_inside_io_errors_and_nothing_elsewhere() {
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, rustls));
        assert_eq!(
            super::refused_certificate(&nested),
            Some(&rustls::CertificateError::UnknownIssuer)
        );
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(super::refused_certificate(&plain), None);
    }
}
