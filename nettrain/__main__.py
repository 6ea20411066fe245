from nettrain.cli import main

raise SystemExit(main())
