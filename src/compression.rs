//! Placeholder until the compression module lands.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    pub fn from_token(s: &str) -> Option<Coding> {
        match s.to_ascii_lowercase().as_str() {
            "br" => Some(Coding::Br),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub br: u32,
    pub gzip: u32,
}

#[derive(Debug, Clone)]
pub struct CompressionPolicy {
    pub algorithms: Vec<Coding>,
    pub min_size: u64,
    pub types: Vec<String>,
    pub store_level: Levels,
    pub stream_level: Levels,
}

impl Default for CompressionPolicy {
    fn default() -> Self {
        CompressionPolicy {
            algorithms: vec![Coding::Br, Coding::Gzip],
            min_size: 1024,
            types: Vec::new(),
            store_level: Levels { br: 9, gzip: 6 },
            stream_level: Levels { br: 4, gzip: 4 },
        }
    }
}
