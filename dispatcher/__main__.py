from dispatcher.process import main

main()
