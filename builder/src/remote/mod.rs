//! Sources that are not on this machine: `ADD <url>` ([`http`]) and
//! `ADD <git url>` ([`git`]).

pub mod git;
pub mod http;
