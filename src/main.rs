//! The `keepsake` binary: every subcommand lives in `keepsake::cli`.

fn main() -> std::process::ExitCode {
    keepsake::cli::main()
}
