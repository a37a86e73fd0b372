//! Which decompressor a layer media type needs.

use super::UnpackError;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// The compression of a layer from its OCI or Docker media type. Foreign (non-distributable)
/// layers are refused: their bytes are not served by the registry.
pub fn compression_for(media_type: &str) -> Result<Compression, UnpackError> {
    if media_type.contains(".foreign.") || media_type.contains(".nondistributable.") {
        return Err(UnpackError::ForeignLayer(media_type.to_owned()));
    }
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        _ => Err(UnpackError::UnknownMediaType(media_type.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_media_types() {
        for (media_type, expected) in [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
        ] {
            assert_eq!(
                compression_for(media_type).unwrap(),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn foreign_layers_are_refused_as_such() {
        for media_type in [
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        ] {
            let error = compression_for(media_type).unwrap_err();
            assert!(
                matches!(error, UnpackError::ForeignLayer(_)),
                "{media_type}"
            );
            assert!(error.to_string().contains("foreign"), "{error}");
        }
    }

    #[test]
    fn unknown_media_types_are_refused() {
        let error =
            compression_for("application/vnd.oci.image.layer.v1.tar+encrypted").unwrap_err();
        assert!(matches!(error, UnpackError::UnknownMediaType(_)));
        assert!(error.to_string().contains("tar+encrypted"), "{error}");
    }
}
