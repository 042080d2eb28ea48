//! Prints the StreamJob CRD as YAML: `cargo run -p weir-operator --bin crdgen > crds/streamjob.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", weir_operator::crd::crd_yaml()?);
    Ok(())
}
