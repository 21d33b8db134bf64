from writer.process import main

main()
