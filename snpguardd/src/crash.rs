//! The daemon's crash points: [`snpguard::crash`], shared with
//! `snpguardctl embed`.

pub use snpguard::crash::{point, points, ENV};
