//! The sender policy: which addresses a task may send as.
//!
//! `email.allowed_from` lists addresses (`billing@example.com`) and domains
//! (`@example.com`); `*` allows any sender. A task whose `from` (or the
//! default sender it falls back to) or `reply_to` is outside the list is
//! parked at once with the permanent error kind `from_not_allowed`: no
//! producer can send as just anyone.
//!
//! Left empty, the policy depends on the transport: the outbox transport
//! (nothing leaves the machine) allows any sender; the SMTP transport
//! allows the domain of `email.default_from` only.

use warren::TaskError;
use warren_tasks::email::EmailAddress;

use crate::settings::TransportKind;

/// The error kind of a sender outside the policy.
pub const FROM_NOT_ALLOWED: &str = "from_not_allowed";

/// Who may be named as `from` and `reply_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPolicy {
    /// Anyone.
    Open,
    /// These addresses (lower case) and `@domains` (lower case, without the `@`).
    Only {
        addresses: Vec<String>,
        domains: Vec<String>,
    },
}

impl SenderPolicy {
    /// The policy of `allowed_from` for `transport`, with `default_from`'s
    /// domain as the SMTP transport's default.
    pub fn new(
        allowed_from: &[String],
        transport: TransportKind,
        default_from: &EmailAddress,
    ) -> Self {
        if allowed_from.is_empty() {
            return match transport {
                TransportKind::Outbox => SenderPolicy::Open,
                TransportKind::Smtp => SenderPolicy::Only {
                    addresses: Vec::new(),
                    domains: vec![default_from.domain().to_ascii_lowercase()],
                },
            };
        }
        if allowed_from.iter().any(|p| p.trim() == "*") {
            return SenderPolicy::Open;
        }
        let mut addresses = Vec::new();
        let mut domains = Vec::new();
        for pattern in allowed_from {
            let p = pattern.trim().to_ascii_lowercase();
            match p.strip_prefix('@') {
                Some(domain) => domains.push(domain.to_owned()),
                None => addresses.push(p),
            }
        }
        SenderPolicy::Only { addresses, domains }
    }

    /// Does the policy allow `address`?
    pub fn allows(&self, address: &EmailAddress) -> bool {
        match self {
            SenderPolicy::Open => true,
            SenderPolicy::Only { addresses, domains } => {
                let email = address.as_mailbox().email.to_string().to_ascii_lowercase();
                let domain = address.domain().to_ascii_lowercase();
                addresses.contains(&email) || domains.contains(&domain)
            }
        }
    }

    /// Checks `from` and `reply_to`; the error names the field.
    pub fn check(
        &self,
        from: &EmailAddress,
        reply_to: Option<&EmailAddress>,
    ) -> Result<(), TaskError> {
        for (field, address) in [("from", Some(from)), ("reply_to", reply_to)] {
            if let Some(a) = address
                && !self.allows(a)
            {
                return Err(TaskError::permanent(
                    FROM_NOT_ALLOWED,
                    format!(
                        "{field} {} is not allowed by email.allowed_from",
                        a.as_mailbox().email
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse("from", s).unwrap()
    }

    #[test]
    fn addresses_and_domains_are_matched_without_case() {
        let policy = SenderPolicy::new(
            &["Billing@Example.com".into(), "@warren.test".into()],
            TransportKind::Smtp,
            &addr("x@localhost"),
        );
        assert!(policy.allows(&addr("billing@example.com")));
        assert!(policy.allows(&addr("Ops <ops@WARREN.test>")));
        assert!(!policy.allows(&addr("ceo@example.com")));
        assert!(!policy.allows(&addr("a@sub.warren.test")));
        let err = policy
            .check(&addr("billing@example.com"), Some(&addr("x@evil.test")))
            .unwrap_err();
        assert_eq!(err.kind, FROM_NOT_ALLOWED);
        assert!(
            err.message.contains("reply_to x@evil.test"),
            "{}",
            err.message
        );
    }

    #[test]
    fn empty_is_open_for_the_outbox_and_the_default_domain_for_smtp() {
        let default = addr("Warren <warren@example.org>");
        assert_eq!(
            SenderPolicy::new(&[], TransportKind::Outbox, &default),
            SenderPolicy::Open
        );
        let smtp = SenderPolicy::new(&[], TransportKind::Smtp, &default);
        assert!(smtp.allows(&addr("news@example.org")));
        assert!(!smtp.allows(&addr("news@other.org")));
        assert_eq!(
            SenderPolicy::new(&["*".into()], TransportKind::Smtp, &default),
            SenderPolicy::Open
        );
    }
}
