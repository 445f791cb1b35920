from benchmarks.stability.run import main

raise SystemExit(main())
