//! Image references with Docker's normalisation rules. (Placeholder until the registry branch
//! lands: parsing is oci-client's.)

use std::fmt;

pub struct ImageRef(oci_client::Reference);

impl ImageRef {
    pub fn parse(s: &str) -> anyhow::Result<ImageRef> {
        Ok(ImageRef(s.parse()?))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.whole())
    }
}
