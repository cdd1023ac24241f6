from trainer.maps.cli import main

raise SystemExit(main())
