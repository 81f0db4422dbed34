//! Sources that are not on this machine: `ADD <url>` ([`http`]) and
//! `ADD <git url>` ([`git`]), and build contexts that are URLs or archives
//! ([`context`]).

pub mod context;
pub mod git;
pub mod http;
