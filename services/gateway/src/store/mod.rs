//! The status stores beside the in-memory view: `redis`, shared by every
//! replica ([`redis`]). The gateway answers through [`crate::status::Tracker`]
//! whichever store `status.store` names.

pub mod redis;

pub use self::redis::{RESULT_REF, RedisOptions, RedisStatusStore, StoreError, result_ref};
