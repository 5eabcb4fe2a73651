from vqct.cli.main import main

raise SystemExit(main())
