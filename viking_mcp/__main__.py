from viking_mcp.faces.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
