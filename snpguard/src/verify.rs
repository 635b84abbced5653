//! (filled by its issue work)
