//! `ferrokv version`: the same lines etcd prints, so scripts that parse `etcd --version` work.

/// The etcd API version ferrokv speaks (what `Status.version` reports is the server's
/// business; this is the API generation).
pub const API_VERSION: &str = "3.6";

/// `FERROKV_GIT_SHA` may be set by the release build; a plain `cargo build` has none.
const GIT_SHA: Option<&str> = option_env!("FERROKV_GIT_SHA");

pub fn render() -> String {
    let mut out = format!(
        "ferrokv Version: {}\nAPI version: {API_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str(&format!("Git SHA: {}\n", GIT_SHA.unwrap_or("Not provided")));
    out.push_str(&format!(
        "OS/Arch: {}/{}\n",
        std::env::consts::OS,
        std::env::consts::ARCH
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_lines_match_etcds_shape() {
        let text = super::render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("ferrokv Version: {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(lines[1], "API version: 3.6");
        assert!(lines[2].starts_with("Git SHA: "));
    }
}
