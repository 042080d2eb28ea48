fn main() -> anyhow::Result<()> {
    weir::cli::main_with(weir::jobs::JobRegistry::builtin())
}
