//! Runaway and hostile rules: time budget, action cap, symlinks outside the rules directory, what-if roots.
