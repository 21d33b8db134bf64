from serving.dashboard.app import main

main()
