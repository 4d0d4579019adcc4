"""`gmlab-report`: gather run folders (single runs, multiruns, `outputs/`) into one table
of groups (configs equal up to ignored keys such as the random seed) and learning curves."""
