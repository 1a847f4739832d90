from moeplane.cli import main

raise SystemExit(main())
