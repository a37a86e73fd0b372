fn main() {
    std::process::exit(eskrun::cli::main());
}
