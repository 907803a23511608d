//! `autocrane yaml`: the install manifests (CRD, RBAC, components) as one YAML stream, with the
//! image of the components chosen on the command line.
//!
//! The text is compiled in from `deploy/`, so what the binary prints is always what the repository
//! ships (the CRD file itself is checked against the Rust types by a test).

/// The image name the manifests in `deploy/components.yaml` use.
pub const DEFAULT_IMAGE: &str = "autocrane:latest";

const CRD: &str = include_str!("../../../deploy/crds/autocranedeployment.yaml");
const RBAC: &str = include_str!("../../../deploy/rbac.yaml");
const COMPONENTS: &str = include_str!("../../../deploy/components.yaml");

/// Flags of `autocrane yaml`.
#[derive(clap::Args, Clone, Debug)]
pub struct YamlArgs {
    /// The container image of the AutoCrane components.
    #[arg(long, env = "AUTOCRANE_IMAGE", default_value = DEFAULT_IMAGE, value_parser = parse_image)]
    pub image: String,
}

fn parse_image(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an image reference (letters, digits and . _ - / : @ only)"
        ))
    }
}

/// The manifests, in apply order, with `image` for the components.
pub fn manifests(args: &YamlArgs) -> String {
    let YamlArgs { image } = args;
    let components = COMPONENTS.replace(
        &format!("image: {DEFAULT_IMAGE}"),
        &format!("image: {image}"),
    );
    [CRD, RBAC, &components]
        .iter()
        .map(|text| text.trim_end())
        .collect::<Vec<_>>()
        .join("\n---\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_replaced_everywhere() {
        let text = manifests(&YamlArgs {
            image: "registry.example/autocrane:1.2.3".into(),
        });
        assert!(!text.contains(DEFAULT_IMAGE));
        assert_eq!(
            text.matches("image: registry.example/autocrane:1.2.3")
                .count(),
            COMPONENTS
                .matches(&format!("image: {DEFAULT_IMAGE}"))
                .count()
        );
        assert!(text.contains("kind: CustomResourceDefinition"));
        assert!(text.contains("kind: ClusterRole"));
    }

    #[test]
    fn a_malformed_image_is_a_usage_error() {
        assert!(parse_image("bad image").is_err());
        assert!(parse_image("").is_err());
        assert!(parse_image("ghcr.io/acme/autocrane@sha256:abc").is_ok());
    }
}
